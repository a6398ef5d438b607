//! `dnd experiment`: the leave-one-out protocol on a checkpoint collection, every baseline, and the
//! report (see `dnd_experiment`); resumable, reusing every artifact it has produced.

use crate::common::check_task_files;
use crate::eval::ScoreProgress;
use crate::finetune::step_bar;
use crate::train::GeneratorArgs;
use anyhow::{bail, Context, Result};
use dnd_collect::CollectionIndex;
use dnd_encode::CachedEncoder;
use dnd_evaluate::report::RunResult;
use dnd_evaluate::{git_revision, EvalConfig};
use dnd_experiment::{Context as Ctx, DndDiff, Event, ExperimentConfig, Paths, Report, Score};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct ExperimentArgs {
    /// Experiment name: artifacts in $DND_CACHE/experiments/<name>, the report in
    /// results/experiment/<name>.
    #[arg(long, default_value = "commonsense")]
    name: String,
    #[command(flatten)]
    generator: GeneratorArgs,
    /// Comma-separated held-out targets (default: every task of the collection).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Task files the collection's tasks came from (checked: a task defined differently from the
    /// collection's record is refused); repeatable.
    #[arg(long)]
    task_file: Vec<PathBuf>,
    /// Score the first N test items of each target (0: all). 100 keeps the whole run (collection,
    /// 8 generators, ~120 scored runs) within 4 hours on 2 cores; the stderr is then about 5 points.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Adapters generated per target, each from its own prompt batch.
    #[arg(long, default_value_t = 5)]
    adapters: usize,
    /// Seed of the prompt batches.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also score this many of each oracle's saved checkpoints (evenly spaced) on its target, to
    /// time when its fine-tuning reaches DnD's accuracy (0: off).
    #[arg(long, default_value_t = 0)]
    oracle_trajectory: usize,
    /// Multiply each generator's predicted departure from the mean training checkpoint by this when
    /// generating (1: as trained; above 1 extrapolates). Adapters made with another scale are made again.
    #[arg(long, default_value_t = 1.0)]
    offset_scale: f64,
    /// Updates of the multi-task LoRA baseline (per target, one LoRA on the union of the other tasks,
    /// an equal share of each, the collection's recipe); 0: none. 50 per task (350 for 8 tasks) gives
    /// it as many examples of each task as that task's own LoRA saw.
    #[arg(long, default_value_t = 0)]
    multitask_steps: usize,
    /// Score only the K training LoRAs whose prompts are nearest each target's (the nearest-prompt
    /// baseline among them; mean and best training LoRA then over these K), not every training LoRA
    /// on every target: a collection of hundreds of tasks would cost hundreds of scored runs per
    /// target (~35 s each at 100 items). Default: all.
    #[arg(long)]
    score_loras: Option<usize>,
    /// Comma-separated names of other experiments whose stored scores are adopted where they are the
    /// same run (same model, test items and adapter weights), instead of scoring again.
    #[arg(long, value_delimiter = ',')]
    reuse_scores: Vec<String>,
    /// Artifact directory, instead of $DND_CACHE/experiments/<name>.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Report directory, instead of results/experiment/<name>.
    #[arg(long)]
    results: Option<PathBuf>,
    /// Job units (one held-out target each): --unit, --jobs, --merge (writes the report), --emit-slurm.
    #[command(flatten)]
    units: crate::slurm::UnitArgs,
}

pub fn run(a: ExperimentArgs) -> Result<()> {
    let g = &a.generator;
    let collection = g.collection_dir();
    let index = CollectionIndex::read(&collection)
        .with_context(|| format!("collection {}", collection.display()))?;
    check_task_files(&a.task_file, &index.resolve(&[], &g.data)?)?;
    let cfg = ExperimentConfig {
        collection,
        targets: a.targets.clone(),
        data: g.data.clone(),
        limit: (a.limit > 0).then_some(a.limit),
        adapters: a.adapters,
        seed: a.seed,
        prompts: g.prompts,
        prompt_len: g.prompt_len,
        decoder_hidden: g.decoder_hidden,
        head: g.head(),
        train: g.train_config(),
        oracle_trajectory: a.oracle_trajectory,
        offset_scale: a.offset_scale,
        multitask_steps: a.multitask_steps,
        score_loras: a.score_loras,
        eval: EvalConfig::default(),
    };
    let experiments = dnd_assets::cache_root().join("experiments");
    let paths = Paths {
        work: a
            .work_dir
            .clone()
            .unwrap_or_else(|| experiments.join(&a.name)),
        results: a
            .results
            .clone()
            .unwrap_or_else(|| PathBuf::from("results/experiment").join(&a.name)),
        reuse: a.reuse_scores.iter().map(|n| experiments.join(n)).collect(),
    };
    let units = &a.units;
    if let Some(script) = &units.emit_slurm {
        let n = dnd_experiment::units(&cfg)?.len();
        return crate::slurm::emit(script, units, "experiment", n);
    }
    if units.starts_workers() {
        crate::slurm::run_workers(units.jobs)?;
    }
    if units.merge || units.starts_workers() {
        let missing = dnd_experiment::missing_units(&cfg, &paths)?;
        if !missing.is_empty() {
            bail!(
                "{} units not done in {}: {}",
                missing.len(),
                paths.work.display(),
                missing.join(", ")
            );
        }
    }
    let model = g.model(&index);
    let model_path = model.path()?;
    let llm = model.load()?;
    let pool = CachedEncoder::new(g.encoder()?, CachedEncoder::default_dir());
    let fresh = g.encoder()?;
    let ctx = Ctx {
        llm: &llm,
        model_path: &model_path,
        pool_encoder: &pool,
        fresh_encoder: &fresh,
        command: std::env::args().collect(),
        git_rev: git_revision(),
    };
    tracing::info!(
        "experiment {}: artifacts in {}, report in {}",
        a.name,
        paths.work.display(),
        paths.results.display()
    );
    let mut scoring = ScoreProgress::default();
    let mut train_bar: Option<(String, indicatif::ProgressBar)> = None;
    let mut on_event = |e: Event<'_>| match e {
        Event::Phase(p) => {
            if let Some((_, b)) = train_bar.take() {
                b.finish_and_clear();
            }
            tracing::info!("== {p}");
        }
        Event::Score(s) => scoring.show(s),
        Event::TrainStep {
            target,
            step,
            steps,
            loss,
            val_loss,
        } => {
            if let Some(v) = val_loss {
                tracing::info!(
                    "generator {target}: step {step}/{steps}, loss {loss:.4}, held-out {v:.4}"
                );
            }
            if train_bar.as_ref().is_none_or(|(t, _)| t != target) {
                train_bar = Some((
                    target.to_string(),
                    step_bar(steps, &format!("generator {target}")),
                ));
            }
            let (_, bar) = train_bar.as_ref().expect("just set");
            bar.set_position(step as u64);
            bar.set_message(format!("loss {loss:.4}"));
        }
    };
    if let Some(selected) = units.selected(dnd_experiment::units(&cfg)?.len())? {
        for u in selected {
            tracing::info!("unit {u}");
            dnd_experiment::run_unit(&cfg, &paths, &ctx, u, &mut on_event)?;
        }
        return Ok(());
    }
    let report = dnd_experiment::run(&cfg, &paths, &ctx, &mut on_event)?;
    for c in &report.comparisons {
        println!("{}", c.sentence());
    }
    println!(
        "report written to {}",
        paths.results.join("report.md").display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct CompareArgs {
    /// The first run: an experiment's results directory or report.json (its DnD rows), or a run
    /// file of `dnd eval` (`<out>/runs/<adapter>/<task>.json`).
    first: PathBuf,
    /// The second, of the same kind; differences are second − first, paired per test item.
    second: PathBuf,
    /// Leave out the first N test items of every target, e.g. the items a setting was chosen on,
    /// so that a longer run checks the choice on items it was not made on.
    #[arg(long, default_value_t = 0)]
    skip: usize,
}

/// Per target, the per-item values `dnd compare` pairs: an experiment's DnD items or one scored run's
/// primary metric.
type Rows = Vec<(String, Vec<f64>)>;

/// `dnd compare`: the second run's per-item values against the first's on every target both have
/// (no model is loaded).
pub fn compare(a: CompareArgs) -> Result<()> {
    let load = |p: &Path| -> Result<(String, Rows)> {
        let file = if p.is_dir() {
            p.join("report.json")
        } else {
            p.to_path_buf()
        };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let dir = file.parent().and_then(Path::file_name);
        let name = dir.map_or(file.display().to_string(), |d| d.to_string_lossy().into());
        if let Ok(report) = Report::from_json(&text) {
            let rows = report.dnd_rows().into_iter();
            return Ok((name, rows.map(|(t, v)| (t.into(), v.to_vec())).collect()));
        }
        let run: RunResult = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: neither an experiment report nor a `dnd eval` run file",
                file.display()
            )
        })?;
        let items = Score::from_run(&run).items;
        Ok((name, vec![(run.settings.task, items)]))
    };
    let (na, ra) = load(&a.first)?;
    let (nb, rb) = load(&a.second)?;
    let diff = DndDiff::new(&borrow(&ra), &borrow(&rb), a.skip).with_context(|| {
        format!(
            "comparing {} with {}",
            a.first.display(),
            a.second.display()
        )
    })?;
    print!("{}", diff.markdown(&na, &nb));
    if a.skip > 0 {
        println!("(The first {} items of each target left out.)", a.skip);
    }
    Ok(())
}

/// The rows as `DndDiff::new` takes them.
fn borrow(rows: &Rows) -> Vec<(&str, &[f64])> {
    rows.iter()
        .map(|(t, v)| (t.as_str(), v.as_slice()))
        .collect()
}
