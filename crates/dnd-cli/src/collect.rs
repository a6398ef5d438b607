//! `dnd collect`: the LoRA checkpoint collection the generator learns from, resumable per step.

use crate::common::{ModelArg, TaskArgs};
use crate::finetune::{base_model, show_step, step_bar, TrainArgs};
use anyhow::{bail, Context, Result};
use dnd_collect::{
    collect, collect_unit, default_collection_dir, merge_units, CollectDefaults, CollectPlan,
    CollectionIndex, Event, Storage,
};
use dnd_tasks::SplitConfig;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct CollectArgs {
    /// The tasks to collect (default: the suite `commonsense`).
    #[command(flatten)]
    tasks: TaskArgs,
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    train: TrainArgs,
    /// Updates before the first saved checkpoint.
    #[arg(long, default_value_t = CollectDefaults::FIRST_PHASE)]
    first_phase: usize,
    /// Updates after the first phase, each saved as a checkpoint.
    #[arg(long, default_value_t = CollectDefaults::CHECKPOINTS)]
    checkpoints: usize,
    /// Collection name: the directory is $DND_CACHE/collections/<name> (~/.cache/dnd/...).
    #[arg(long, default_value = "commonsense")]
    name: String,
    /// Collection directory, instead of the one --name implies (keep it outside the repository).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Delete the collection directory first instead of resuming it.
    #[arg(long)]
    fresh: bool,
    /// The float type saved checkpoints are stored in: f32, f16 (half the disk) or bf16.
    #[arg(long, default_value = "f32", value_parser = parse_storage)]
    storage: Storage,
    /// Persist the run state at least every N steps of the first phase (every saved step persists it).
    #[arg(long, default_value_t = 10)]
    state_every: usize,
    /// Also write a summary to <PREFIX>.json and <PREFIX>.md (e.g. results/collect/commonsense).
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Collect only job unit I of this plan (task I, from 0, in plan order), for a scheduler's array
    /// job: `env` reads SLURM_ARRAY_TASK_ID, else JOB_COMPLETION_INDEX (Kubernetes Indexed Jobs).
    /// Leaves collection.json to --merge. A unit already done is skipped.
    #[arg(long, conflicts_with_all = ["merge", "emit_slurm", "fresh"])]
    unit: Option<String>,
    /// With --unit: each array element runs this many consecutive units (element i: units i*K ..).
    #[arg(long, default_value_t = 1)]
    pub units_per_job: usize,
    /// Build collection.json from the finished units of this plan; names the units not done.
    #[arg(long, conflicts_with_all = ["emit_slurm", "fresh"])]
    merge: bool,
    /// Write a Slurm batch script running this plan as a job array (one element per --units-per-job
    /// units) to FILE, and print how to submit and merge it. Nothing is collected.
    #[arg(long, value_name = "FILE")]
    emit_slurm: Option<PathBuf>,
    /// Slurm settings of --emit-slurm: most array elements at once, memory and CPUs per element, and
    /// the log directory.
    #[arg(long, default_value_t = 8)]
    pub slurm_throttle: usize,
    #[arg(long, default_value = "4G")]
    pub slurm_mem: String,
    #[arg(long, default_value_t = 2)]
    pub slurm_cpus: usize,
    #[arg(long, default_value = "slurm-logs")]
    pub slurm_logs: PathBuf,
}

fn parse_storage(s: &str) -> std::result::Result<Storage, String> {
    serde_json::from_value(serde_json::json!(s))
        .map_err(|_| format!("`{s}`: one of f32, f16, bf16"))
}

pub fn run(a: CollectArgs) -> Result<()> {
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(|| default_collection_dir(&a.name));
    if a.fresh && dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let plan = CollectPlan {
        dir: dir.clone(),
        tasks: a.tasks.resolve(Some("commonsense"))?,
        train: a.train.config(a.first_phase + a.checkpoints)?,
        first_phase: a.first_phase,
        data_root: a.train.data.clone(),
        split: SplitConfig::default(),
        state_every: a.state_every,
        storage: a.storage,
    };
    if let Some(script) = &a.emit_slurm {
        return crate::slurm::emit(script, &a, plan.tasks.len());
    }
    let base = base_model(&a.model)?;
    if a.merge {
        let index = merge_units(&plan, &base)?;
        return report(&a, &dir, &index);
    }
    let llm = a.model.load()?;
    if let Some(unit) = &a.unit {
        let first = crate::slurm::unit_index(unit)? * a.units_per_job;
        let units = first..(first + a.units_per_job).min(plan.tasks.len());
        if units.is_empty() {
            bail!("unit {first}: the plan has {} units", plan.tasks.len());
        }
        for u in units {
            tracing::info!("unit {u} ({}) of {}", plan.tasks[u].name, dir.display());
            collect_unit(&llm.model, &llm.tokenizer, &base, &plan, u, &mut progress())?;
        }
        return Ok(());
    }
    tracing::info!(
        "collecting {} task(s) into {}",
        plan.tasks.len(),
        dir.display()
    );
    let index = collect(&llm.model, &llm.tokenizer, &base, &plan, &mut progress())?;
    report(&a, &dir, &index)
}

/// The progress bar of each task and a line when it is done.
fn progress() -> impl FnMut(Event<'_>) {
    let mut bar = None;
    move |e| match e {
        Event::TaskStart { task, steps } => bar = Some(step_bar(steps, task)),
        Event::Step(r) => bar.iter().for_each(|b| show_step(b, r)),
        Event::TaskDone(m) => {
            if let Some(b) = bar.take() {
                b.finish();
            }
            tracing::info!(
                "{}: {} checkpoints, {:.0} s",
                m.spec.task,
                m.checkpoints.len(),
                m.wall_time_s
            );
        }
    }
}

/// Print the collection's table and write it as the --summary files.
fn report(a: &CollectArgs, dir: &Path, index: &CollectionIndex) -> Result<()> {
    // The summary names files as `$DND_CACHE/...` and pinned models by name: no machine's paths.
    let mut summary = index.clone();
    summary.base_model.path = dnd_assets::portable_name(Path::new(&index.base_model.path));
    let md = markdown(&summary, &dnd_assets::portable_name(dir));
    println!("{md}");
    if let Some(prefix) = &a.summary {
        dnd_io::write_atomic(
            &prefix.with_extension("json"),
            &serde_json::to_string_pretty(&summary)?,
        )?;
        dnd_io::write_atomic(&prefix.with_extension("md"), &md)?;
    }
    Ok(())
}

fn markdown(index: &CollectionIndex, dir: &str) -> String {
    let t = &index.train;
    let mut s = format!(
        "Collection {} (base sha256 {}), rank {} alpha {} on {}, seed {}, batch {}, lr {}, \
         {} steps of which the last {} are saved.\n\n\
         | task | checkpoints | loss first -> last | held-out loss base -> LoRA (n) | learned | wall time (s) | mean std A | mean std B |\n\
         |---|---|---|---|---|---|---|---|\n",
        dir,
        &index.base_model.sha256[..12],
        t.rank,
        t.alpha,
        t.targets.join(","),
        t.seed,
        t.batch,
        t.lr,
        t.steps,
        t.steps - index.first_phase,
    );
    for e in &index.tasks {
        let (heldout, learned) = match &e.heldout {
            Some(h) => (
                format!(
                    "{:.3} -> {:.3} ± {:.3} ({})",
                    h.base_loss, h.lora_loss, h.paired_stderr, h.items
                ),
                if h.learned() { "yes" } else { "**no**" },
            ),
            None => ("-".to_string(), "-"),
        };
        s.push_str(&format!(
            "| {} | {} | {:.3} -> {:.3} | {heldout} | {learned} | {:.0} | {:.2e} | {:.2e} |\n",
            e.task,
            e.checkpoints,
            e.first_loss,
            e.final_loss,
            e.wall_time_s,
            e.mean_std_lora_a,
            e.mean_std_lora_b
        ));
    }
    let not_learned: Vec<&str> = index
        .tasks
        .iter()
        .filter(|e| e.heldout.as_ref().is_some_and(|h| !h.learned()))
        .map(|e| e.task.as_str())
        .collect();
    s.push_str(&format!(
        "\nLearned: the LoRA's held-out answer-token loss (first {} validation items) is below the base \
         model's by more than two paired stderrs. Not learned: {}.\n",
        dnd_collect::HELDOUT_ITEMS,
        if not_learned.is_empty() {
            "none".to_string()
        } else {
            not_learned.join(", ")
        }
    ));
    s.push_str(&format!(
        "\nTotal wall time {:.0} s ({:.1} min).\n",
        index.wall_time_s,
        index.wall_time_s / 60.0
    ));
    s
}
