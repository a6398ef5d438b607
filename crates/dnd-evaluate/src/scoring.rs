//! The resumable scoring loop shared by `dnd eval` and `dnd experiment`: for one labelled adapter (or
//! the base model) and a set of tasks, reuse every stored run whose [`Settings`] match, and score the
//! rest with the adapter merged into the base weights (merged once, only if something is left to do).

use std::path::Path;

use dnd_llm::Llm;
use dnd_tasks::{Example, Part, Task};

use crate::evaluate::{evaluate, primary_metric, EvalConfig};
use crate::report::{style_name, RunResult, Settings, Store};
use crate::{EvalError, LlmBackend, Result};
use dnd_assets::portable_name as portable;

/// What every run of one scoring session shares besides the adapter and the task.
#[derive(Debug, Clone)]
pub struct ScoreSpec {
    /// The base model file or directory ([`Settings::model`] records its portable name).
    pub model: String,
    pub split: Part,
    pub limit: Option<usize>,
    pub data: String,
    pub split_seed: u64,
    pub eval: EvalConfig,
    pub git_rev: Option<String>,
    pub command: Vec<String>,
}

impl ScoreSpec {
    /// The settings a run of `task` (`n` examples) with `adapter` is stored and found under.
    pub fn settings(
        &self,
        task: &Task,
        n: usize,
        adapter: Option<&Path>,
        adapter_sha256: Option<String>,
    ) -> Settings {
        Settings {
            model: portable(Path::new(&self.model)),
            adapter: adapter.map(portable),
            adapter_sha256,
            task: task.name.clone(),
            split: self.split.name().into(),
            style: style_name(self.eval.style).into(),
            protocol: self.eval.protocol,
            limit: self.limit,
            n,
            max_new_tokens: self.eval.max_new_tokens,
            code_timeout_s: self.eval.code_timeout.as_secs_f64(),
            data: self.data.clone(),
            split_seed: self.split_seed,
        }
    }
}

/// Progress of [`score`], for the caller to display.
pub enum ScoreEvent<'a> {
    /// A stored run was reused.
    Kept(&'a RunResult),
    /// Scoring `task` for `label` begins: `n` examples.
    Start {
        label: &'a str,
        task: &'a str,
        n: usize,
    },
    /// Examples done so far in the current run.
    Item(usize),
    /// A run was scored and saved.
    Done(&'a RunResult),
}

/// Score `label` (the base model when `adapter` is `None`, else the PEFT adapter directory) on every
/// `(task, examples)` set, reusing what `store` already holds and saving each new run as it finishes,
/// so an interrupted session loses at most the run in progress. Returns the runs in `sets` order.
pub fn score(
    llm: &Llm,
    store: &Store,
    spec: &ScoreSpec,
    label: &str,
    adapter: Option<&Path>,
    sets: &[(Task, Vec<Example>)],
    on_event: &mut dyn FnMut(ScoreEvent<'_>),
) -> Result<Vec<RunResult>> {
    let sha = adapter.map(adapter_sha256).transpose()?.flatten();
    let mut merged = None;
    let mut runs = Vec::with_capacity(sets.len());
    for (task, examples) in sets {
        let settings = spec.settings(task, examples.len(), adapter, sha.clone());
        if let Some(done) = store.load(label, &settings)? {
            on_event(ScoreEvent::Kept(&done));
            runs.push(done);
            continue;
        }
        let model = match adapter {
            None => &llm.model,
            Some(dir) => {
                if merged.is_none() {
                    let lora = dnd_llm::peft::load(dir, llm.model.config(), llm.model.dtype())?;
                    merged = Some(llm.model.merged(&lora)?);
                }
                merged.as_ref().expect("just merged")
            }
        };
        let lm = LlmBackend::new(model, &llm.tokenizer);
        on_event(ScoreEvent::Start {
            label,
            task: &task.name,
            n: examples.len(),
        });
        let eval = evaluate(&lm, task, examples, &spec.eval, &mut |i| {
            on_event(ScoreEvent::Item(i))
        })?;
        let primary = primary_metric(task, spec.eval.protocol);
        let run = RunResult::new(
            label,
            settings,
            primary,
            eval,
            spec.git_rev.clone(),
            spec.command.clone(),
        );
        store.save(&run)?;
        on_event(ScoreEvent::Done(&run));
        runs.push(run);
    }
    Ok(runs)
}

/// The stored run of `label` (scoring `adapter`, or the base model) on `task`'s `examples`, if one was
/// made with these settings: what merging a job array's units collects.
pub fn stored_run(
    store: &Store,
    spec: &ScoreSpec,
    label: &str,
    adapter: Option<&Path>,
    task: &Task,
    examples: &[Example],
) -> Result<Option<RunResult>> {
    let sha = adapter.map(adapter_sha256).transpose()?.flatten();
    store.load(label, &spec.settings(task, examples.len(), adapter, sha))
}

/// Hash of `adapter_model.safetensors` when present, so resuming notices a rewritten adapter.
pub fn adapter_sha256(dir: &Path) -> Result<Option<String>> {
    let file = dir.join("adapter_model.safetensors");
    if !file.is_file() {
        return Ok(None);
    }
    dnd_assets::sha256_file(&file)
        .map(Some)
        .map_err(|e| EvalError::Input(format!("hashing {}: {e}", file.display())))
}

/// `git rev-parse HEAD`, with `-dirty` when tracked files differ from it; `None` outside a repo.
/// Recorded next to every result so a number can be traced to the code that produced it. Changes
/// under `results/` (where reports are written) do not count: they are outputs, not code, and one
/// report rewritten before the next would otherwise mark every later one dirty.
pub fn git_revision() -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = git(&["rev-parse", "HEAD"])?;
    let dirty = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":(exclude)results",
    ])
    .is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}
