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
    /// Job units (one task each): --unit, --merge, --emit-slurm.
    #[command(flatten)]
    pub units: crate::slurm::UnitArgs,
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
    // Before anything is removed: a unit, a merge or an array script with --fresh would delete the
    // finished units of the whole plan (every array element in turn).
    if a.fresh && (a.units.unit.is_some() || a.units.merge || a.units.emit_slurm.is_some()) {
        bail!("--fresh cannot be combined with --unit, --merge or --emit-slurm");
    }
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
    if let Some(script) = &a.units.emit_slurm {
        return crate::slurm::emit(script, &a.units, "collect", plan.tasks.len());
    }
    let base = base_model(&a.model)?;
    if a.units.starts_workers() {
        let start = std::time::Instant::now();
        crate::slurm::run_workers(a.units.jobs)?;
        let index = merge_units(&plan, &base)?;
        let elapsed = start.elapsed().as_secs_f64();
        return report(&a, &dir, &index, Some((a.units.jobs, elapsed)));
    }
    if a.units.merge {
        let index = merge_units(&plan, &base)?;
        return report(&a, &dir, &index, None);
    }
    let llm = a.model.load()?;
    if let Some(units) = a.units.selected(plan.tasks.len())? {
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
    report(&a, &dir, &index, None)
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

/// Print the collection's table and write it as the --summary files; `workers` is (N, seconds) for a
/// --jobs run, whose elapsed time is not the sum of its tasks' times.
fn report(
    a: &CollectArgs,
    dir: &Path,
    index: &CollectionIndex,
    workers: Option<(usize, f64)>,
) -> Result<()> {
    // The summary names files as `$DND_CACHE/...` and pinned models by name: no machine's paths.
    let mut summary = index.clone();
    summary.base_model.path = dnd_assets::portable_name(Path::new(&index.base_model.path));
    let mut md = markdown(&summary, &dnd_assets::portable_name(dir));
    if let Some((n, s)) = workers {
        md.push_str(&format!(
            "This command's elapsed time with {n} single-threaded workers: {s:.0} s ({:.1} min).\n",
            s / 60.0
        ));
    }
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
        "\nSummed per-task wall time {:.0} s ({:.1} min).\n",
        index.wall_time_s,
        index.wall_time_s / 60.0
    ));
    s
}
