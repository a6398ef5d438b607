//! Argument pieces shared by several subcommands.

use anyhow::{bail, Context, Result};
use candle_core::DType;
use dnd_llm::{Llm, Lora};
use dnd_tasks::{Catalog, Task};
use std::path::{Path, PathBuf};

/// `--model`: a GGUF file, a Hugging Face directory, or the name of a pinned asset (`smollm2`, `qwen2`),
/// fetched into the cache on first use. Defaults to SmolLM2-135M-Instruct.
#[derive(clap::Args, Clone)]
pub struct ModelArg {
    #[arg(long, default_value = "smollm2")]
    pub model: String,
}

impl ModelArg {
    pub fn path(&self) -> Result<PathBuf> {
        let p = Path::new(&self.model);
        if p.exists() {
            return Ok(p.to_path_buf());
        }
        let asset = dnd_assets::asset(&self.model)
            .with_context(|| format!("`{}` is neither a path nor a known model", self.model))?;
        Ok(dnd_assets::Cache::new().ensure(asset)?)
    }

    pub fn load(&self) -> Result<Llm> {
        let path = self.path()?;
        let t = std::time::Instant::now();
        let llm =
            Llm::load(&path, DType::F32).with_context(|| format!("loading {}", path.display()))?;
        tracing::info!(
            "loaded {} in {:.1}s",
            path.display(),
            t.elapsed().as_secs_f64()
        );
        Ok(llm)
    }
}

/// Load a PEFT adapter directory for `llm`.
pub fn load_adapter(llm: &Llm, dir: &Path) -> Result<Lora> {
    dnd_llm::peft::load(dir, llm.model.config(), llm.model.dtype())
        .with_context(|| format!("loading adapter {}", dir.display()))
}

/// Which tasks a command works on: names, a suite, or the tasks of task files.
#[derive(clap::Args, Clone)]
pub struct TaskArgs {
    /// Comma-separated task names: built-in ones (`dnd tasks --suite builtin`) or those of --task-file.
    #[arg(long, visible_alias = "task", value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// A suite shipped with dnd (`dnd tasks --suites`): all its tasks, or those --tasks names.
    #[arg(long)]
    pub suite: Option<String>,
    /// A task file (TOML or JSON, README "Task files"), repeatable. Its tasks can be named in
    /// --tasks; with neither --tasks nor --suite, all of them are used.
    #[arg(long)]
    pub task_file: Vec<PathBuf>,
}

impl TaskArgs {
    /// The built-in tasks and those of --task-file.
    pub fn catalog(&self) -> Result<Catalog> {
        Ok(Catalog::new(&self.task_file)?)
    }

    /// The selected tasks; the suite `default` when none are selected (an error if there is none).
    pub fn resolve(&self, default: Option<&str>) -> Result<Vec<Task>> {
        if let (Some(s), false) = (&self.suite, self.tasks.is_empty()) {
            let suite = dnd_tasks::suite(s)?;
            return self
                .tasks
                .iter()
                .map(|n| {
                    let t = suite.iter().find(|t| &t.name == n);
                    t.cloned()
                        .with_context(|| format!("task `{n}` is not in suite `{s}`"))
                })
                .collect();
        }
        let catalog = self.catalog()?;
        if !self.tasks.is_empty() {
            return Ok(catalog.resolve(&self.tasks)?);
        }
        match (&self.suite, default) {
            (Some(s), _) => Ok(dnd_tasks::suite(s)?),
            (None, _) if !self.task_file.is_empty() => Ok(catalog.file_tasks().to_vec()),
            (None, Some(s)) => Ok(dnd_tasks::suite(s)?),
            (None, None) => bail!("name the tasks: --tasks, --suite or --task-file"),
        }
    }
}

/// Refuse task files whose definition of a collected task differs from the collection's: the
/// generator trains on the tasks as they were collected.
pub fn check_task_files(files: &[PathBuf], collected: &[Task]) -> Result<()> {
    let catalog = Catalog::new(files)?;
    for t in collected {
        if let Some(own) = catalog.file_tasks().iter().find(|f| f.name == t.name) {
            if !own.same_data(t) {
                bail!(
                    "task `{}` of the task file differs from the collection's definition: collect it \
                     again (a new --name) or use the file it was collected with",
                    t.name
                );
            }
        }
    }
    Ok(())
}
