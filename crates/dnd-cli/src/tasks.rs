//! `dnd tasks`: list the tasks of a suite or task files, with their data sizes per split part.

use anyhow::{Context, Result};
use dnd_tasks::{Part, SplitConfig, Task, SUITES};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// List the suites shipped with dnd instead of tasks.
    #[arg(long)]
    suites: bool,
    /// Scan the data root for the task universe and print it as a TOML suite file (what
    /// crates/dnd-tasks/suites/universe.toml holds).
    #[arg(long)]
    scan_universe: bool,
    /// A suite (default: every built-in task).
    #[arg(long, conflicts_with = "task_file")]
    suite: Option<String>,
    /// A task file (TOML or JSON, README "Task files"): list its tasks; repeatable.
    #[arg(long)]
    task_file: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "markdown")]
    format: Format,
    /// Data root the built-in tasks read.
    #[arg(long, env = "DND_DATA", default_value = dnd_tasks::DEFAULT_DATA_DIR)]
    data: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum Format {
    /// A Markdown table.
    Markdown,
    /// One JSON array, each task's full definition with its split sizes.
    Json,
}

/// One listed task: its definition and how many items each part of its split holds.
#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    task: Task,
    items: Items,
}

#[derive(Serialize)]
struct Items {
    adapter_train: usize,
    prompts: usize,
    validation: usize,
    test: usize,
}

pub fn run(a: Args) -> Result<()> {
    if a.suites {
        for (name, what) in SUITES {
            println!("{name}\t{what}");
        }
        return Ok(());
    }
    if a.scan_universe {
        print!(
            "{}",
            dnd_tasks::to_toml(&dnd_tasks::scan_universe(&a.data)?)
        );
        return Ok(());
    }
    let tasks = match (&a.suite, a.task_file.is_empty()) {
        (Some(s), _) => dnd_tasks::suite(s)?,
        (None, false) => dnd_tasks::Catalog::new(&a.task_file)?.file_tasks().to_vec(),
        (None, true) => dnd_tasks::builtin_tasks(),
    };
    // Built-in tasks whose files are not under the data root (COPA, CommonsenseQA) are skipped, a
    // task file's never.
    let (tasks, missing): (Vec<Task>, Vec<Task>) = tasks
        .into_iter()
        .partition(|t| !a.task_file.is_empty() || t.available(&a.data));
    for t in &missing {
        tracing::warn!(
            "{}: source files not under {}, skipped",
            t.name,
            a.data.display()
        );
    }
    let split = SplitConfig::default();
    let rows = tasks
        .into_iter()
        .map(|task| {
            let s = task
                .splits(&a.data, &split)
                .with_context(|| format!("task {} under {}", task.name, a.data.display()))?;
            let n = |p: Part| s.part(p).len();
            let items = Items {
                adapter_train: n(Part::AdapterTrain),
                prompts: n(Part::Prompts),
                validation: n(Part::Validation),
                test: n(Part::Test),
            };
            Ok(Row { task, items })
        })
        .collect::<Result<Vec<_>>>()?;
    match a.format {
        Format::Json => println!("{}", dnd_io::to_json(&rows)),
        Format::Markdown => print!("{}", markdown(&rows)),
    }
    Ok(())
}

fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| task | dataset | layout | template | metric | adapter-train | prompts | validation | test |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let t = &r.task;
        let mut layouts: Vec<&str> = t.sources.iter().map(|s| s.layout.name()).collect();
        layouts.dedup();
        let i = &r.items;
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            t.name,
            t.dataset,
            layouts.join(", "),
            t.template.name(),
            t.metric.name(),
            i.adapter_train,
            i.prompts,
            i.validation,
            i.test
        ));
    }
    out.push_str(&format!("\n{} tasks\n", rows.len()));
    out
}
