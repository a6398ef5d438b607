//! The orchestration: phases in an order that makes partial results useful (base model, the LoRA
//! matrix, then per target: generator, generated adapters, their scores, the uniform average), each
//! skipping what its output already holds.

use crate::label::RunLabel;
use crate::pca::{flatten, stride_for, Pca};
use crate::position::Position;
use crate::report::{
    PcaPoint, Report, Score, TargetCosts, TargetResult, TargetScores, REPORT_SCHEMA,
};
use crate::{baselines, io_err, read_json, ExperimentError, Result};
use candle_core::DType;
use dnd_assets::portable_name;
use dnd_collect::{task_checkpoints, CollectionIndex};
use dnd_decode::Head;
use dnd_encode::PromptEncoder;
use dnd_evaluate::report::{RunResult, Store};
use dnd_evaluate::{score, select_examples, EvalConfig, ScoreEvent, ScoreSpec};
use dnd_generate::{draw_batches, save_adapter, DragAndDrop, Generator};
use dnd_llm::Llm;
use dnd_tasks::{Example, Part, SplitConfig, Task};
use dnd_train::{
    prepare_training, GeneratorTrainConfig, GeneratorTrainer, TrainManifest, TrainingInputs,
    TRAIN_MANIFEST_FILE,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Per-adapter record of a generation, kept inside the adapter directory.
pub const GENERATION_FILE: &str = "generation.json";
const EMBEDDINGS_FILE: &str = "task_embeddings.json";

/// What the experiment does.
#[derive(Debug, Clone)]
pub struct ExperimentConfig {
    /// The checkpoint collection (its `collection.json` lists the tasks).
    pub collection: PathBuf,
    /// Held-out targets; empty: every task of the collection.
    pub targets: Vec<String>,
    pub data: PathBuf,
    /// Score the first `limit` test items of each target.
    pub limit: Option<usize>,
    /// Generated adapters per target, each from its own prompt batch.
    pub adapters: usize,
    /// Seed of the prompt batches.
    pub seed: u64,
    /// N and L of the generator's condition.
    pub prompts: usize,
    pub prompt_len: usize,
    /// Maps before the decoder's last layer (`DecoderConfig::cpu`).
    pub decoder_hidden: usize,
    /// The decoder's last layer.
    pub head: Head,
    /// Every generator is trained with this for a fixed number of steps; the final one is used.
    pub train: GeneratorTrainConfig,
    /// Score this many of the oracle's saved checkpoints (evenly spaced, first and last included) on
    /// its target, to see when its fine-tuning reaches DnD's accuracy; 0: only the last.
    pub oracle_trajectory: usize,
    /// Multiply each generator's predicted departure from the mean checkpoint by this at
    /// generation (1: as trained); see `Generator::with_offset_scale`.
    pub offset_scale: f64,
    /// Updates of the multi-task baseline: per target, one LoRA fine-tuned on the union of the other
    /// tasks (an equal share of each, the collection's recipe). 0: no multi-task baseline.
    pub multitask_steps: usize,
    /// Training LoRAs scored on each target: `None`, every one (the LoRA-by-target matrix, and the
    /// mean and best training LoRA over all of them); `Some(k)`, only the `k` whose prompts are nearest
    /// the target's (the nearest-prompt baseline among them), so that a collection of hundreds of
    /// tasks does not cost hundreds of scored runs per target. The target's own LoRA (the oracle) is
    /// scored either way.
    pub score_loras: Option<usize>,
    pub eval: EvalConfig,
}

/// Where artifacts (reused by reruns) and the report go.
#[derive(Debug, Clone)]
pub struct Paths {
    pub work: PathBuf,
    pub results: PathBuf,
    /// Work directories of other experiments whose stored scores this one adopts where they are the
    /// same run (same model, test items and adapter weights): a probe that changes only the generator
    /// then scores only its generated adapters, not the base model and training LoRAs again.
    pub reuse: Vec<PathBuf>,
}

/// What the experiment runs with.
pub struct Context<'a> {
    pub llm: &'a Llm,
    pub model_path: &'a Path,
    /// Prompt pools (generator training, nearest task): may go through the embedding cache.
    pub pool_encoder: &'a dyn PromptEncoder,
    /// Generation: uncached, so the measured time to generate an adapter includes encoding.
    pub fresh_encoder: &'a dyn PromptEncoder,
    pub command: Vec<String>,
    pub git_rev: Option<String>,
}

/// Progress, for the caller to display.
pub enum Event<'a> {
    Phase(&'a str),
    Score(ScoreEvent<'a>),
    TrainStep {
        target: &'a str,
        step: usize,
        steps: usize,
        loss: f64,
        /// Held-out loss, at validation steps.
        val_loss: Option<f64>,
    },
}

#[derive(Serialize, Deserialize)]
struct GenerationRecord {
    seconds: f64,
    seed: u64,
    batch: usize,
    prompt_indices: Vec<usize>,
    generator_sha256: String,
    /// Absent in records written before the scale existed, which all used 1.
    #[serde(default = "unit")]
    offset_scale: f64,
}

/// Serde's default for a scale absent from generation records written before it existed: 1, the value
/// they were all made with.
fn unit() -> f64 {
    1.0
}

#[derive(Serialize, Deserialize)]
struct Embeddings {
    encoder: String,
    max_len: usize,
    tasks: BTreeMap<String, Vec<f32>>,
}

/// Run (or resume) the experiment and write its report; returns the report. The steps: check the
/// plan, score the baselines every target shares, then per target the generator, its adapters and
/// the target's own baselines, then assemble the report.
pub fn run(
    cfg: &ExperimentConfig,
    paths: &Paths,
    ctx: &Context<'_>,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Report> {
    let plan = Plan::new(cfg)?;
    let mut scores = Scores::new(cfg, paths, ctx, &plan)?;
    let cosines = prompt_cosines(cfg, paths, ctx, &plan, &mut scores, on_event)?;
    score_baselines(cfg, ctx, &plan, &plan.sets, &cosines, &mut scores, on_event)?;
    let mut work = BTreeMap::new();
    for set in plan.sets.chunks(1) {
        let done = per_target(cfg, paths, ctx, &plan, set, &mut scores, on_event)?;
        work.insert(set[0].0.name.clone(), done);
    }
    on_event(Event::Phase(
        "PCA of training checkpoints and generated adapters",
    ));
    let t = Instant::now();
    let generated: BTreeMap<String, Vec<PathBuf>> = work
        .iter()
        .map(|(t, w)| (t.clone(), w.generated.clone()))
        .collect();
    let mut flat = Flattener {
        model: ctx.llm.model.config(),
        stride: None,
    };
    let pca = pca_points(cfg, &plan.tasks, &generated, &mut flat)?;
    let mut positions = positions(cfg, paths, &plan.tasks, &generated, &mut flat)?;
    scores.timed("pca", t);
    let rows = plan
        .targets
        .iter()
        .map(|t| target_row(cfg, &plan, &scores, &mut work, &mut positions, &cosines, t))
        .collect::<Result<Vec<_>>>()?;
    let manifests: BTreeMap<String, TrainManifest> =
        work.into_iter().map(|(t, w)| (t, w.manifest)).collect();
    let report = assemble(
        cfg,
        paths,
        ctx,
        &plan,
        scores,
        &manifests,
        (rows, cosines, pca),
    );
    report.write(&paths.results, &manifests)?;
    Ok(report)
}

/// Where the job units of an experiment record that they are done (`<work>/units/<target>.json`).
const UNITS_DIR: &str = "units";

/// The completion marker of one target's unit: the configuration it ran (targets aside), so a merge
/// does not take a unit run with other settings for done.
#[derive(Serialize, Deserialize, PartialEq)]
struct UnitDone {
    target: String,
    config: String,
}

impl UnitDone {
    fn new(cfg: &ExperimentConfig, target: &str) -> Self {
        let cfg = ExperimentConfig {
            targets: Vec::new(),
            ..cfg.clone()
        };
        Self {
            target: target.into(),
            config: format!("{cfg:?}"),
        }
    }

    fn path(paths: &Paths, target: &str) -> PathBuf {
        paths.work.join(UNITS_DIR).join(format!("{target}.json"))
    }
}

/// The experiment's job units, in plan order: one per held-out target.
pub fn units(cfg: &ExperimentConfig) -> Result<Vec<String>> {
    Ok(Plan::new(cfg)?.targets)
}

/// Job unit `unit` (a held-out target): the base model and the training LoRAs scored on it, its
/// generator trained, its adapters generated and scored, its own baselines; then its completion marker.
/// A finished unit's artifacts are reused, so a requeued unit redoes nothing. The report is left to
/// [`run`] once [`missing_units`] is empty.
pub fn run_unit(
    cfg: &ExperimentConfig,
    paths: &Paths,
    ctx: &Context<'_>,
    unit: usize,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<()> {
    let plan = Plan::new(cfg)?;
    let Some(set) = plan.sets.get(unit..=unit) else {
        return Err(ExperimentError::Config(format!(
            "unit {unit}: the plan has {} units (targets)",
            plan.sets.len()
        )));
    };
    let mut scores = Scores::new(cfg, paths, ctx, &plan)?;
    let cosines = prompt_cosines(cfg, paths, ctx, &plan, &mut scores, on_event)?;
    score_baselines(cfg, ctx, &plan, set, &cosines, &mut scores, on_event)?;
    per_target(cfg, paths, ctx, &plan, set, &mut scores, on_event)?;
    let target = &set[0].0.name;
    dnd_io::write_json::<_, ExperimentError>(
        &UnitDone::path(paths, target),
        &UnitDone::new(cfg, target),
    )
}

/// The units without a completion marker for this configuration, as `index (target)`.
pub fn missing_units(cfg: &ExperimentConfig, paths: &Paths) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for (i, target) in units(cfg)?.iter().enumerate() {
        let done = read_json::<UnitDone>(&UnitDone::path(paths, target))
            .is_ok_and(|d| d == UnitDone::new(cfg, target));
        if !done {
            missing.push(format!("{i} ({target})"));
        }
    }
    Ok(missing)
}

/// What the experiment covers: the collection's tasks, the held-out targets and their test items.
struct Plan {
    index: CollectionIndex,
    /// The collection's tasks as it defines them, and their names.
    defs: Vec<Task>,
    tasks: Vec<String>,
    targets: Vec<String>,
    sets: Vec<(Task, Vec<Example>)>,
}

impl Plan {
    /// The plan of `cfg`, refusing what leave-one-out cannot run on.
    fn new(cfg: &ExperimentConfig) -> Result<Self> {
        let index = CollectionIndex::read(&cfg.collection)?;
        let defs = index.resolve(&[], &cfg.data)?;
        let tasks: Vec<String> = defs.iter().map(|t| t.name.clone()).collect();
        if tasks.len() < 2 {
            return Err(ExperimentError::Config(format!(
                "{} holds {} task(s); leave-one-out needs at least two",
                cfg.collection.display(),
                tasks.len()
            )));
        }
        let targets = if cfg.targets.is_empty() {
            tasks.clone()
        } else {
            cfg.targets.clone()
        };
        if let Some(t) = targets.iter().find(|t| !tasks.contains(t)) {
            return Err(ExperimentError::Config(format!(
                "target {t} is not in the collection ({})",
                tasks.join(", ")
            )));
        }
        if cfg.adapters == 0 {
            return Err(ExperimentError::Config(
                "generate at least one adapter per target".into(),
            ));
        }
        if cfg.score_loras == Some(0) {
            return Err(ExperimentError::Config(
                "score at least one training LoRA per target: the nearest-prompt baseline is one"
                    .into(),
            ));
        }
        let split = SplitConfig::default();
        let mut sets: Vec<(Task, Vec<Example>)> = Vec::new();
        for t in &targets {
            let task = defs[tasks.iter().position(|n| n == t).expect("checked above")].clone();
            let examples = select_examples(&task, &cfg.data, Part::Test, cfg.limit, &split)?;
            if examples.is_empty() {
                return Err(ExperimentError::Config(format!("{t}: empty test split")));
            }
            sets.push((task, examples));
        }
        Ok(Self {
            index,
            defs,
            tasks,
            targets,
            sets,
        })
    }

    /// Whether `task` may be trained on when `target` is held out: it is another source dataset
    /// (templates of one dataset share their inputs, so they are held out together).
    fn held_apart(&self, task: &str, target: &str) -> bool {
        let dataset = |n: &str| self.defs.iter().find(|t| t.name == n).map(|t| &t.dataset);
        task != target && dataset(task) != dataset(target)
    }

    /// The training LoRAs scored on `target` (besides its own, the oracle): every task held apart
    /// from it, or the `k` of them whose prompts are nearest its own, in plan order.
    fn training_loras(
        &self,
        cfg: &ExperimentConfig,
        cosines: &[(String, String, f64)],
        target: &str,
    ) -> Vec<String> {
        let apart = self.tasks.iter().filter(|t| self.held_apart(t, target));
        let Some(k) = cfg.score_loras else {
            return apart.cloned().collect();
        };
        let mut near: Vec<(&str, f64)> = cosines
            .iter()
            .filter(|(_, t, _)| t == target)
            .map(|(o, _, c)| (o.as_str(), *c))
            .collect();
        near.sort_by(|a, b| b.1.total_cmp(&a.1));
        near.truncate(k);
        apart
            .filter(|t| near.iter().any(|(o, _)| o == t))
            .cloned()
            .collect()
    }
}

/// The score store and every run scored or reused so far, with the wall time of each phase.
struct Scores<'a> {
    store: Store,
    spec: ScoreSpec,
    runs: BTreeMap<(String, String), RunResult>,
    command: &'a [String],
    phases: Vec<(String, f64)>,
    started: Instant,
}

impl<'a> Scores<'a> {
    fn new(
        cfg: &ExperimentConfig,
        paths: &Paths,
        ctx: &'a Context<'_>,
        plan: &Plan,
    ) -> Result<Self> {
        let spec = ScoreSpec {
            model: ctx.model_path.display().to_string(),
            split: Part::Test,
            limit: cfg.limit,
            data: cfg.data.display().to_string(),
            split_seed: SplitConfig::default().seed,
            eval: cfg.eval.clone(),
            git_rev: ctx.git_rev.clone(),
            command: ctx.command.clone(),
        };
        let targets = &plan.targets;
        let loras = cfg.score_loras.unwrap_or(plan.tasks.len() - 1);
        tracing::info!(
            "{} target(s) ({}), {loras} training LoRAs and the oracle scored per target: {} scored \
             runs of at most {} test items each (stored ones are reused), {} generator(s) of {} steps",
            targets.len(),
            targets.join(", "),
            targets.len() * (2 + loras + cfg.adapters + 1 + cfg.oracle_trajectory),
            cfg.limit.map_or("all".into(), |l| l.to_string()),
            targets.len(),
            cfg.train.steps
        );
        let reused: Vec<PathBuf> = paths.reuse.iter().map(|w| w.join("scores")).collect();
        if let Some(d) = reused.iter().find(|d| !d.is_dir()) {
            return Err(ExperimentError::Config(format!(
                "no stored scores to reuse in {}",
                d.display()
            )));
        }
        Ok(Self {
            store: Store::reusing(&paths.work.join("scores"), &reused),
            spec,
            runs: BTreeMap::new(),
            command: &ctx.command,
            phases: Vec::new(),
            started: Instant::now(),
        })
    }

    /// Score `label` (with `adapter`) on `sets`, reusing stored runs. Every new batch of scores also
    /// refreshes the store's `results.md`: a partial table to read while the experiment runs.
    fn score(
        &mut self,
        llm: &Llm,
        label: &RunLabel,
        adapter: Option<&Path>,
        sets: &[(Task, Vec<Example>)],
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Vec<RunResult>> {
        let label = label.to_string();
        let rs = score(
            llm,
            &self.store,
            &self.spec,
            &label,
            adapter,
            sets,
            &mut |e| on_event(Event::Score(e)),
        )?;
        for r in &rs {
            self.runs
                .insert((r.label.clone(), r.settings.task.clone()), r.clone());
        }
        let all: Vec<RunResult> = self.runs.values().cloned().collect();
        self.store.write_summary(&all, self.command)?;
        Ok(rs)
    }

    /// Record the wall time of phase `name`, begun at `t`.
    fn timed(&mut self, name: &str, t: Instant) {
        self.phases.push((name.into(), t.elapsed().as_secs_f64()));
    }

    /// The stored score of `label` on `task`.
    fn get(&self, label: &RunLabel, task: &str) -> Result<Score> {
        self.runs
            .get(&(label.to_string(), task.to_string()))
            .map(Score::from_run)
            .ok_or_else(|| ExperimentError::Config(format!("no score for {label} on {task}")))
    }
}

/// The runs before any generator: the base model on `sets`, then on each target its own LoRA (the
/// oracle) and the training LoRAs [`Plan::training_loras`] picks. Without `--score-loras`, every
/// task's LoRA is scored on every target, as the LoRA-by-target matrix.
fn score_baselines(
    cfg: &ExperimentConfig,
    ctx: &Context<'_>,
    plan: &Plan,
    sets: &[(Task, Vec<Example>)],
    cosines: &[(String, String, f64)],
    scores: &mut Scores<'_>,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<()> {
    on_event(Event::Phase("base model"));
    let t = Instant::now();
    scores.score(ctx.llm, &RunLabel::Base, None, sets, on_event)?;
    scores.timed("score base", t);
    on_event(Event::Phase("training LoRAs on every target"));
    let t = Instant::now();
    // Per target, the LoRAs scored on it; then each LoRA once on all its targets (one adapter merge).
    let on: Vec<Vec<String>> = sets
        .iter()
        .map(|(t, _)| match cfg.score_loras {
            None => plan.tasks.clone(),
            Some(_) => std::iter::once(t.name.clone())
                .chain(plan.training_loras(cfg, cosines, &t.name))
                .collect(),
        })
        .collect();
    for task in &plan.tasks {
        let picked: Vec<(Task, Vec<Example>)> = sets
            .iter()
            .zip(&on)
            .filter(|(_, loras)| loras.contains(task))
            .map(|(set, _)| set.clone())
            .collect();
        if picked.is_empty() {
            continue;
        }
        let last = last_checkpoint(&cfg.collection, task)?;
        let label = RunLabel::Lora(task.clone());
        scores.score(ctx.llm, &label, Some(&last), &picked, on_event)?;
    }
    scores.timed("score training LoRAs", t);
    Ok(())
}

/// What one target's own steps produced.
struct TargetWork {
    manifest: TrainManifest,
    generator_wall: f64,
    generation_s: Vec<f64>,
    generated: Vec<PathBuf>,
    trajectory: Vec<(usize, f64)>,
}

/// One held-out target: train its generator on the other tasks, generate and score its adapters,
/// then its oracle trajectory (when asked for) and the uniform average of the other tasks.
fn per_target(
    cfg: &ExperimentConfig,
    paths: &Paths,
    ctx: &Context<'_>,
    plan: &Plan,
    set: &[(Task, Vec<Example>)],
    scores: &mut Scores<'_>,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<TargetWork> {
    let target = &set[0].0.name;
    let others: Vec<Task> = plan
        .defs
        .iter()
        .filter(|t| plan.held_apart(&t.name, target))
        .cloned()
        .collect();
    if others.is_empty() {
        return Err(ExperimentError::Config(format!(
            "{target}: every other task of the collection shares its dataset; nothing to train on"
        )));
    }
    on_event(Event::Phase(&format!("{target}: generator")));
    let t = Instant::now();
    let gen_dir = paths.work.join("generators").join(target);
    let manifest = train_generator(cfg, ctx, &plan.index, &others, &gen_dir, target, on_event)?;
    let generator_wall = read_wall(&gen_dir)?;
    scores.timed(&format!("train generator {target}"), t);

    on_event(Event::Phase(&format!("{target}: generate")));
    let t = Instant::now();
    let generated = generate_for(cfg, ctx, paths, &set[0].0, &gen_dir)?;
    let generation_s = generated
        .iter()
        .map(|d| Ok(read_json::<GenerationRecord>(&d.join(GENERATION_FILE))?.seconds))
        .collect::<Result<Vec<_>>>()?;
    scores.timed(&format!("generate {target}"), t);

    on_event(Event::Phase(&format!("{target}: score generated adapters")));
    let t = Instant::now();
    for (index, d) in generated.iter().enumerate() {
        let label = RunLabel::Dnd {
            target: target.clone(),
            index,
        };
        scores.score(ctx.llm, &label, Some(d), set, on_event)?;
    }
    scores.timed(&format!("score dnd {target}"), t);
    let trajectory = oracle_trajectory(cfg, ctx, set, scores, on_event)?;
    uniform_average_for(cfg, paths, ctx, set, &others, scores, on_event)?;
    multitask_for(cfg, paths, ctx, plan, set, &others, scores, on_event)?;
    Ok(TargetWork {
        manifest,
        generator_wall,
        generation_s,
        generated,
        trajectory,
    })
}

/// (step, value) of the oracle's saved checkpoints on its target, when `--oracle-trajectory` asks.
fn oracle_trajectory(
    cfg: &ExperimentConfig,
    ctx: &Context<'_>,
    set: &[(Task, Vec<Example>)],
    scores: &mut Scores<'_>,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Vec<(usize, f64)>> {
    if cfg.oracle_trajectory == 0 {
        return Ok(Vec::new());
    }
    let target = &set[0].0.name;
    on_event(Event::Phase(&format!("{target}: oracle trajectory")));
    let t = Instant::now();
    let mut points = Vec::new();
    let last = last_checkpoint(&cfg.collection, target)?;
    for (step, dir) in trajectory(&cfg.collection, target, cfg.oracle_trajectory)? {
        // The last step is the oracle itself, already scored under its own label.
        let label = if dir == last {
            RunLabel::Lora(target.clone())
        } else {
            RunLabel::LoraStep {
                task: target.clone(),
                step,
            }
        };
        let r = scores.score(ctx.llm, &label, Some(&dir), set, on_event)?;
        points.push((step, r[0].metrics[&r[0].primary].value));
    }
    scores.timed(&format!("oracle trajectory {target}"), t);
    Ok(points)
}

/// The multi-task baseline of the target, when asked for: one LoRA on the union of the `others`
/// tasks' adapter-train parts (trained once, resumed if interrupted), scored on the target.
#[allow(clippy::too_many_arguments)]
fn multitask_for(
    cfg: &ExperimentConfig,
    paths: &Paths,
    ctx: &Context<'_>,
    plan: &Plan,
    set: &[(Task, Vec<Example>)],
    others: &[Task],
    scores: &mut Scores<'_>,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<()> {
    if cfg.multitask_steps == 0 {
        return Ok(());
    }
    let target = &set[0].0.name;
    on_event(Event::Phase(&format!("{target}: multi-task LoRA")));
    let t = Instant::now();
    let dir = paths.work.join("adapters").join(target).join("multitask");
    let train = dnd_collect::LoraTrainConfig {
        steps: cfg.multitask_steps,
        ..plan.index.train.clone()
    };
    let steps = train.steps;
    dnd_collect::finetune(
        &ctx.llm.model,
        &ctx.llm.tokenizer,
        &plan.index.base_model,
        others,
        &train,
        &cfg.data,
        &SplitConfig::default(),
        &dir,
        &mut |r| {
            if r.step % 25 == 0 {
                tracing::info!(
                    "{target} multi-task LoRA: step {}/{steps}, loss {:.4}",
                    r.step,
                    r.loss
                );
            }
        },
    )?;
    scores.timed(&format!("train multi-task LoRA {target}"), t);
    let t = Instant::now();
    let label = RunLabel::MultiTask(target.clone());
    scores.score(ctx.llm, &label, Some(&dir), set, on_event)?;
    scores.timed(&format!("score multi-task LoRA {target}"), t);
    Ok(())
}

/// The uniform average of every checkpoint of the `others` tasks (built once), scored on the target.
fn uniform_average_for(
    cfg: &ExperimentConfig,
    paths: &Paths,
    ctx: &Context<'_>,
    set: &[(Task, Vec<Example>)],
    others: &[Task],
    scores: &mut Scores<'_>,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<()> {
    let target = &set[0].0.name;
    on_event(Event::Phase(&format!("{target}: uniform average")));
    let t = Instant::now();
    let avg = paths.work.join("adapters").join(target).join("uniform-avg");
    if !avg.is_dir() {
        let mut ckpts = Vec::new();
        for o in others {
            ckpts.extend(task_checkpoints(&cfg.collection, &o.name)?);
        }
        let lora = baselines::uniform_average(&ckpts, ctx.llm.model.config())?;
        let names: Vec<&str> = others.iter().map(|o| o.name.as_str()).collect();
        let note =
            serde_json::json!({ "averaged_checkpoints": ckpts.len(), "tasks": names }).to_string();
        save_adapter(
            &lora,
            &ctx.model_path.display().to_string(),
            &avg,
            &[("uniform_average.json", note)],
        )?;
    }
    let label = RunLabel::UniformAverage(target.clone());
    scores.score(ctx.llm, &label, Some(&avg), set, on_event)?;
    scores.timed(&format!("uniform average {target}"), t);
    Ok(())
}

/// (training task, target, cosine of their mean pooled prompt embeddings), every training task against
/// every target: the nearest-prompt pick, the LoRAs `--score-loras` scores, and the report's table.
fn prompt_cosines(
    cfg: &ExperimentConfig,
    paths: &Paths,
    ctx: &Context<'_>,
    plan: &Plan,
    scores: &mut Scores<'_>,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Vec<(String, String, f64)>> {
    on_event(Event::Phase("prompt embeddings (nearest task)"));
    let t = Instant::now();
    let embeddings = task_embeddings(cfg, paths, ctx, &plan.defs)?;
    scores.timed("prompt embeddings", t);
    Ok(plan
        .tasks
        .iter()
        .flat_map(|o| plan.targets.iter().map(move |t| (o, t)))
        .filter(|(o, t)| plan.held_apart(o, t))
        .map(|(o, t)| {
            let c = baselines::cosine(&embeddings[t.as_str()], &embeddings[o.as_str()]);
            (o.clone(), t.clone(), c)
        })
        .collect())
}

/// The report's row of `target`: every baseline's score, DnD's, and what its steps measured.
fn target_row(
    cfg: &ExperimentConfig,
    plan: &Plan,
    scores: &Scores<'_>,
    work: &mut BTreeMap<String, TargetWork>,
    positions: &mut BTreeMap<String, Position>,
    cosines: &[(String, String, f64)],
    target: &String,
) -> Result<TargetResult> {
    let loras = plan
        .training_loras(cfg, cosines, target)
        .into_iter()
        .map(|o| scores.get(&RunLabel::Lora(o), target))
        .collect::<Result<Vec<_>>>()?;
    let (nearest, cos) = cosines
        .iter()
        .filter(|(_, t, _)| t == target)
        .map(|(o, _, c)| (o.clone(), *c))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("at least one other task");
    let dnd = (0..cfg.adapters)
        .map(|index| {
            let dnd = RunLabel::Dnd {
                target: target.clone(),
                index,
            };
            scores.get(&dnd, target)
        })
        .collect::<Result<Vec<_>>>()?;
    let w = work.get_mut(target).expect("every target has its work");
    let m = &w.manifest;
    let row_scores = TargetScores {
        target: target.clone(),
        base: scores.get(&RunLabel::Base, target)?,
        training_loras: loras,
        uniform_average: scores.get(&RunLabel::UniformAverage(target.clone()), target)?,
        multitask: if cfg.multitask_steps > 0 {
            Some(scores.get(&RunLabel::MultiTask(target.clone()), target)?)
        } else {
            None
        },
        nearest: scores.get(&RunLabel::Lora(nearest.clone()), target)?,
        nearest_task: nearest,
        nearest_cosine: cos,
        oracle: scores.get(&RunLabel::Lora(target.clone()), target)?,
        dnd,
    };
    let costs = TargetCosts {
        generation_s: w.generation_s.clone(),
        oracle_finetune_s: oracle_seconds(&plan.index, target),
        generator_train_s: m.steps.iter().map(|s| s.seconds).sum(),
        generator_wall_s: w.generator_wall,
        generator_val_loss: m.validations.last().map(|v| v.loss),
        generator_val_loss_mean_checkpoint: m.baseline_mean_checkpoint,
    };
    let mut row = TargetResult::new(row_scores, costs);
    row.oracle_trajectory = std::mem::take(&mut w.trajectory);
    row.oracle_steps = oracle_steps(&cfg.collection, target)?;
    row.dnd_position = positions.remove(target);
    Ok(row)
}

/// The rows, prompt cosines and PCA (points, explained variance) the report is assembled from.
type Parts = (
    Vec<TargetResult>,
    Vec<(String, String, f64)>,
    (Vec<PcaPoint>, Vec<f64>),
);

/// The report: settings, every row, the LoRA-by-target matrix, comparisons and the phase times.
fn assemble(
    cfg: &ExperimentConfig,
    paths: &Paths,
    ctx: &Context<'_>,
    plan: &Plan,
    mut scores: Scores<'_>,
    manifests: &BTreeMap<String, TrainManifest>,
    (results, prompt_cosines, (pca, pca_explained)): Parts,
) -> Report {
    let matrix = plan
        .tasks
        .iter()
        .flat_map(|l| plan.targets.iter().map(move |t| (l.clone(), t.clone())))
        .filter_map(|(l, t)| {
            let r = scores
                .runs
                .get(&(RunLabel::Lora(l.clone()).to_string(), t.clone()))?;
            Some((l, t, r.metrics[&r.primary].value))
        })
        .collect();
    let work_s = scores.runs.values().map(|r| r.wall_s).sum::<f64>();
    let total = scores.started.elapsed().as_secs_f64();
    scores.phases.push(("total".into(), total));
    Report {
        schema: REPORT_SCHEMA,
        command: ctx.command.clone(),
        git_rev: ctx.git_rev.clone(),
        model: portable_name(ctx.model_path),
        collection: portable_name(&cfg.collection),
        work_dir: portable_name(&paths.work),
        limit: cfg.limit,
        adapters: cfg.adapters,
        offset_scale: cfg.offset_scale,
        seed: cfg.seed,
        prompts: cfg.prompts,
        prompt_len: cfg.prompt_len,
        train: cfg.train.clone(),
        decoder: manifests
            .values()
            .next()
            .map(|m| (m.decoder.clone(), m.parameters)),
        protocol: cfg.eval.protocol.name().into(),
        collection_wall_s: plan.index.wall_time_s,
        scoring_compute_s: work_s,
        phase_wall_s: scores.phases,
        comparisons: Report::compare_all(&results),
        targets: results,
        lora_matrix: matrix,
        scored_loras: cfg.score_loras,
        prompt_cosines,
        pca,
        pca_explained,
    }
}

fn last_checkpoint(collection: &Path, task: &str) -> Result<PathBuf> {
    task_checkpoints(collection, task)?
        .pop()
        .ok_or_else(|| ExperimentError::Config(format!("{task} has no checkpoints")))
}

/// `k` of a task's saved checkpoints, evenly spaced with the first and the last, as (step, dir).
fn trajectory(collection: &Path, task: &str, k: usize) -> Result<Vec<(usize, PathBuf)>> {
    let dirs = task_checkpoints(collection, task)?;
    let n = dirs.len();
    let mut picked: Vec<usize> = (0..k.min(n))
        .map(|i| {
            if k <= 1 {
                n - 1
            } else {
                (i * (n - 1) + (k - 1) / 2) / (k - 1)
            }
        })
        .collect();
    picked.dedup();
    picked
        .into_iter()
        .map(|i| {
            let name = dirs[i].file_name().unwrap_or_default().to_string_lossy();
            let step = name
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .map_err(|_| {
                    ExperimentError::Config(format!("{}: no step number", dirs[i].display()))
                })?;
            Ok((step, dirs[i].clone()))
        })
        .collect()
}

/// Updates in the oracle's collection run.
fn oracle_steps(collection: &Path, task: &str) -> Result<usize> {
    let path = collection.join(task).join(dnd_collect::RUN_MANIFEST_FILE);
    Ok(dnd_collect::Manifest::read(&path)?.steps.len())
}

/// The oracle's fine-tuning cost: the wall time of its collection run (all of its steps).
fn oracle_seconds(index: &CollectionIndex, task: &str) -> f64 {
    index
        .tasks
        .iter()
        .find(|t| t.task == task)
        .map_or(f64::NAN, |t| t.wall_time_s)
}

/// Train (or resume, or reuse) the generator for `target` on the `others`' checkpoints and prompts.
fn train_generator(
    cfg: &ExperimentConfig,
    ctx: &Context<'_>,
    index: &CollectionIndex,
    others: &[Task],
    dir: &Path,
    target: &str,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<TrainManifest> {
    if let Ok(m) = read_json::<TrainManifest>(&dir.join(TRAIN_MANIFEST_FILE)) {
        // The maps before the last layer and the last layer are the decoder settings the
        // experiment varies; a generator built with others must not be taken for this experiment's.
        let hidden = m.decoder.stages.iter().rev().nth(1).map(|s| s[0]);
        if hidden != Some(cfg.decoder_hidden) || m.decoder.head != cfg.head {
            return Err(ExperimentError::Config(format!(
                "{} holds a generator with {hidden:?} maps before its last layer ({:?}), not {} \
                 ({:?}): give this setting its own --name",
                dir.display(),
                m.decoder.head,
                cfg.decoder_hidden,
                cfg.head
            )));
        }
        if m.complete && m.config == cfg.train {
            return Ok(m);
        }
    }
    let started = Instant::now();
    let inputs = TrainingInputs {
        collection: &cfg.collection,
        index,
        tasks: others,
        model_path: ctx.model_path,
        data: &cfg.data,
        prompts: cfg.prompts,
        prompt_len: cfg.prompt_len,
        out: dir.to_path_buf(),
        decoder_hidden: cfg.decoder_hidden,
        head: cfg.head,
        sft: cfg.train.objective.needs_llm(),
    };
    let (setup, data) = prepare_training(&inputs, ctx.pool_encoder)?;
    let mut trainer = GeneratorTrainer::open(setup, data, cfg.train.clone())?;
    let steps = cfg.train.steps;
    // Wall time (data preparation, updates, validation, saves) summed over the invocations that
    // trained, recorded at every save: an interrupted invocation loses only its share since its
    // last save, as it loses those steps.
    let before = read_wall(dir)?;
    let record = |extra: f64| {
        dnd_io::write_atomic(
            &wall_path(dir),
            serde_json::json!({ "wall_s": before + extra }).to_string(),
        )
    };
    let m = trainer.run(None, &mut |s, v| {
        if s.step.is_multiple_of(cfg.train.save_every) {
            if let Err(e) = record(started.elapsed().as_secs_f64()) {
                tracing::warn!("generator {target}: wall time not recorded: {e}");
            }
        }
        on_event(Event::TrainStep {
            target,
            step: s.step,
            steps,
            loss: s.loss,
            val_loss: v.map(|v| v.loss),
        })
    })?;
    record(started.elapsed().as_secs_f64())?;
    Ok(m)
}

/// `<generators>/<target>.wall.json`, beside the generator directory so it never disturbs it.
fn wall_path(dir: &Path) -> PathBuf {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    dir.with_file_name(format!("{name}.wall.json"))
}

/// The generator's recorded training wall time (0 before any was recorded).
fn read_wall(dir: &Path) -> Result<f64> {
    let path = wall_path(dir);
    if !path.is_file() {
        return Ok(0.0);
    }
    let v: serde_json::Value = read_json(&path)?;
    Ok(v["wall_s"].as_f64().unwrap_or(0.0))
}

/// The target's generated adapters, generating those not on disk or made by another generator than
/// the one in `gen_dir` (each records the sha256 of the decoder weights it came from). The prompt
/// batches are drawn reproducibly from the target's `prompts` split: they never depend on what exists.
fn generate_for(
    cfg: &ExperimentConfig,
    ctx: &Context<'_>,
    paths: &Paths,
    target: &Task,
    gen_dir: &Path,
) -> Result<Vec<PathBuf>> {
    let dir = paths.work.join("adapters").join(&target.name);
    let dirs: Vec<PathBuf> = (0..cfg.adapters)
        .map(|i| dir.join(format!("dnd-{i}")))
        .collect();
    let generator = generator_hash(gen_dir)?;
    let current = |d: &Path| {
        read_json::<GenerationRecord>(&d.join(GENERATION_FILE))
            .is_ok_and(|r| r.generator_sha256 == generator && r.offset_scale == cfg.offset_scale)
    };
    if dirs.iter().all(|d| current(d)) {
        return Ok(dirs);
    }
    let gen =
        Generator::load(gen_dir, ctx.llm.model.config(), None)?.with_offset_scale(cfg.offset_scale);
    let dnd = DragAndDrop::new(
        gen,
        ctx.fresh_encoder,
        &ctx.model_path.display().to_string(),
        gen_dir,
    )?;
    let prompts = target.prompts(&cfg.data, Part::Prompts)?;
    let batches = draw_batches(
        prompts.len(),
        dnd.generator().prompts_per_batch(),
        cfg.adapters,
        cfg.seed,
    )?;
    for (d, batch) in dirs.iter().zip(batches) {
        if current(d) {
            continue;
        }
        let texts: Vec<&str> = batch.iter().map(|&i| prompts[i].as_str()).collect();
        let seconds = dnd.write(&texts, d)?;
        let rec = GenerationRecord {
            seconds,
            seed: cfg.seed,
            batch: texts.len(),
            prompt_indices: batch,
            generator_sha256: generator.clone(),
            offset_scale: cfg.offset_scale,
        };
        dnd_io::write_json::<_, ExperimentError>(&d.join(GENERATION_FILE), &rec)?;
    }
    Ok(dirs)
}

/// The sha256 of every weight file (`*.safetensors`) at the top of a generator directory, joined in
/// name order: which generator an adapter came from.
fn generator_hash(dir: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "safetensors"))
        // A save killed half-way leaves a temporary `.tmp-*.safetensors`: not part of the generator.
        .filter(|p| !dnd_io::is_temp(p))
        .collect();
    files.sort();
    let hashes = files
        .iter()
        .map(|f| {
            dnd_assets::sha256_file(f)
                .map_err(|e| ExperimentError::Config(format!("hashing {}: {e}", f.display())))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(hashes.join("+"))
}

/// Mean pooled prompt embedding of every task's `prompts` split, cached in the work directory.
fn task_embeddings(
    cfg: &ExperimentConfig,
    paths: &Paths,
    ctx: &Context<'_>,
    tasks: &[Task],
) -> Result<BTreeMap<String, Vec<f32>>> {
    let path = paths.work.join(EMBEDDINGS_FILE);
    let enc = ctx.pool_encoder;
    let mut cached = read_json::<Embeddings>(&path)
        .ok()
        .filter(|e| e.encoder == enc.model_hash() && e.max_len == enc.max_len())
        .unwrap_or(Embeddings {
            encoder: enc.model_hash(),
            max_len: enc.max_len(),
            tasks: BTreeMap::new(),
        });
    let mut changed = false;
    for t in tasks {
        if cached.tasks.contains_key(&t.name) {
            continue;
        }
        let prompts = t.prompts(&cfg.data, Part::Prompts)?;
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let states = enc.encode(&refs)?;
        cached
            .tasks
            .insert(t.name.clone(), baselines::mean_pooled(&states)?);
        changed = true;
    }
    if changed {
        let text = serde_json::to_string(&cached).expect("plain data serialises");
        dnd_io::write_atomic(&path, text)?;
    }
    Ok(cached.tasks)
}

/// Adapters flattened alike (every module's A then B, one strided subset of coordinates for all), so
/// that the PCA and the weight-space positions compare like with like.
struct Flattener<'a> {
    model: &'a dnd_llm::ModelConfig,
    stride: Option<usize>,
}

impl Flattener<'_> {
    fn load(&mut self, dir: &Path) -> Result<Vec<f32>> {
        let lora = dnd_llm::peft::load(dir, self.model, DType::F32)?;
        let s = *self.stride.get_or_insert_with(|| stride_for(&lora));
        flatten(&lora, s)
    }
}

/// Every training checkpoint of every task and every generated adapter, projected on the top two
/// principal components of the training checkpoints; and the variance share of each component.
fn pca_points(
    cfg: &ExperimentConfig,
    tasks: &[String],
    generated: &BTreeMap<String, Vec<PathBuf>>,
    flat: &mut Flattener<'_>,
) -> Result<(Vec<PcaPoint>, Vec<f64>)> {
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for t in tasks {
        for (step, d) in task_checkpoints(&cfg.collection, t)?.iter().enumerate() {
            rows.push(flat.load(d)?);
            labels.push((t.clone(), "checkpoint".to_string(), step));
        }
    }
    let pca = Pca::fit(&rows, 2);
    let mut points: Vec<PcaPoint> = rows
        .iter()
        .zip(labels)
        .map(|(r, (task, kind, index))| PcaPoint::new(task, kind, index, &pca.project(r)))
        .collect();
    for (target, dirs) in generated {
        for (i, d) in dirs.iter().enumerate() {
            let p = pca.project(&flat.load(d)?);
            points.push(PcaPoint::new(target.clone(), "generated".into(), i, &p));
        }
    }
    Ok((points, pca.explained.clone()))
}

/// Per target, where its generated adapters lie against the uniform average of the other tasks'
/// checkpoints and against each other task's LoRA (its last checkpoint).
fn positions(
    cfg: &ExperimentConfig,
    paths: &Paths,
    tasks: &[String],
    generated: &BTreeMap<String, Vec<PathBuf>>,
    flat: &mut Flattener<'_>,
) -> Result<BTreeMap<String, Position>> {
    let mut loras = BTreeMap::new();
    for t in tasks {
        loras.insert(t.clone(), flat.load(&last_checkpoint(&cfg.collection, t)?)?);
    }
    let mut out = BTreeMap::new();
    for (target, dirs) in generated {
        let average = flat.load(&paths.work.join("adapters").join(target).join("uniform-avg"))?;
        let gen = dirs
            .iter()
            .map(|d| flat.load(d))
            .collect::<Result<Vec<_>>>()?;
        let others: Vec<(&str, &[f32])> = loras
            .iter()
            .filter(|(t, _)| *t != target)
            .map(|(t, v)| (t.as_str(), v.as_slice()))
            .collect();
        if let Some(p) = Position::measure(&gen, &average, &others) {
            out.insert(target.clone(), p);
        }
    }
    Ok(out)
}
