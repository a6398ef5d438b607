//! The orchestration: phases in an order that makes partial results useful (base model, the LoRA
//! matrix, then per target: generator, generated adapters, their scores, the uniform average), each
//! skipping what its output already holds.

use crate::label::RunLabel;
use crate::pca::{flatten, stride_for, Pca};
use crate::position::Position;
use crate::report::{PcaPoint, Report, Score, TargetResult, REPORT_SCHEMA};
use crate::{baselines, io_err, read_json, ExperimentError, Result};
use candle_core::DType;
use dnd_assets::portable_name;
use dnd_collect::{task_checkpoints, CollectionIndex};
use dnd_encode::PromptEncoder;
use dnd_evaluate::report::{RunResult, Store};
use dnd_evaluate::{score, select_examples, EvalConfig, ScoreEvent, ScoreSpec};
use dnd_generate::{draw_batches, save_adapter, DragAndDrop, Generator};
use dnd_llm::Llm;
use dnd_tasks::{find_task, task_prompts, Example, Part, SplitConfig, Task};
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
    /// Every generator is trained with this for a fixed number of steps; the final one is used.
    pub train: GeneratorTrainConfig,
    /// Score this many of the oracle's saved checkpoints (evenly spaced, first and last included) on
    /// its target, to see when its fine-tuning reaches DnD's accuracy; 0: only the last.
    pub oracle_trajectory: usize,
    /// Multiply each generator's predicted departure from the mean checkpoint by this at
    /// generation (1: as trained); see `Generator::with_offset_scale`.
    pub offset_scale: f64,
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

/// Run (or resume) the experiment and write its report; returns the report.
pub fn run(
    cfg: &ExperimentConfig,
    paths: &Paths,
    ctx: &Context<'_>,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Report> {
    let started = Instant::now();
    let mut phase_s: Vec<(String, f64)> = Vec::new();
    let mut timed = |name: &str, t: Instant| phase_s.push((name.into(), t.elapsed().as_secs_f64()));
    let index = CollectionIndex::read(&cfg.collection)?;
    let tasks: Vec<String> = index.tasks.iter().map(|t| t.task.clone()).collect();
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
    let split = SplitConfig::default();
    let mut sets: Vec<(Task, Vec<Example>)> = Vec::new();
    for t in &targets {
        let task = find_task(t)?;
        let examples = select_examples(&task, &cfg.data, Part::Test, cfg.limit, &split)?;
        if examples.is_empty() {
            return Err(ExperimentError::Config(format!("{t}: empty test split")));
        }
        sets.push((task, examples));
    }
    let spec = ScoreSpec {
        model: ctx.model_path.display().to_string(),
        split: Part::Test,
        limit: cfg.limit,
        data: cfg.data.display().to_string(),
        split_seed: split.seed,
        eval: cfg.eval.clone(),
        git_rev: ctx.git_rev.clone(),
        command: ctx.command.clone(),
    };
    tracing::info!(
        "{} target(s) ({}), {} training LoRAs: {} scored runs of at most {} test items each \
         (stored ones are reused), {} generator(s) of {} steps",
        targets.len(),
        targets.join(", "),
        tasks.len(),
        targets.len() * (1 + tasks.len() + cfg.adapters + 1 + cfg.oracle_trajectory),
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
    let store = Store::reusing(&paths.work.join("scores"), &reused);
    let mut runs: BTreeMap<(String, String), RunResult> = BTreeMap::new();
    // Every new batch of scores also refreshes the store's `results.md`: a partial table to read
    // while the experiment runs.
    let mut keep = |rs: Vec<RunResult>| -> Result<()> {
        for r in rs {
            runs.insert((r.label.clone(), r.settings.task.clone()), r);
        }
        let all: Vec<RunResult> = runs.values().cloned().collect();
        Ok(store.write_summary(&all, &ctx.command)?)
    };

    on_event(Event::Phase("base model"));
    let t = Instant::now();
    keep(score(
        ctx.llm,
        &store,
        &spec,
        &RunLabel::Base.to_string(),
        None,
        &sets,
        &mut |e| on_event(Event::Score(e)),
    )?)?;
    timed("score base", t);

    on_event(Event::Phase("training LoRAs on every target"));
    let t = Instant::now();
    for task in &tasks {
        let last = last_checkpoint(&cfg.collection, task)?;
        keep(score(
            ctx.llm,
            &store,
            &spec,
            &RunLabel::Lora(task.clone()).to_string(),
            Some(&last),
            &sets,
            &mut |e| on_event(Event::Score(e)),
        )?)?;
    }
    timed("score training LoRAs", t);

    on_event(Event::Phase("prompt embeddings (nearest task)"));
    let t = Instant::now();
    let embeddings = task_embeddings(cfg, paths, ctx, &tasks)?;
    timed("prompt embeddings", t);

    let model_cfg = ctx.llm.model.config();
    let mut manifests = BTreeMap::new();
    let mut generator_wall: BTreeMap<String, f64> = BTreeMap::new();
    let mut trajectories: BTreeMap<String, Vec<(usize, f64)>> = BTreeMap::new();
    let mut generation_s: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut generated: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for set in sets.chunks(1) {
        let target = &set[0].0.name;
        let others: Vec<String> = tasks.iter().filter(|t| *t != target).cloned().collect();
        on_event(Event::Phase(&format!("{target}: generator")));
        let t = Instant::now();
        let gen_dir = paths.work.join("generators").join(target);
        let manifest = train_generator(cfg, ctx, &index, &others, &gen_dir, target, on_event)?;
        generator_wall.insert(target.clone(), read_wall(&gen_dir)?);
        manifests.insert(target.clone(), manifest);
        timed(&format!("train generator {target}"), t);

        on_event(Event::Phase(&format!("{target}: generate")));
        let t = Instant::now();
        let dirs = generate_for(cfg, ctx, paths, target, &gen_dir)?;
        let mut secs = Vec::new();
        for d in &dirs {
            let rec: GenerationRecord = read_json(&d.join(GENERATION_FILE))?;
            secs.push(rec.seconds);
        }
        generation_s.insert(target.clone(), secs);
        timed(&format!("generate {target}"), t);

        on_event(Event::Phase(&format!("{target}: score generated adapters")));
        let t = Instant::now();
        for (i, d) in dirs.iter().enumerate() {
            keep(score(
                ctx.llm,
                &store,
                &spec,
                &RunLabel::Dnd {
                    target: target.clone(),
                    index: i,
                }
                .to_string(),
                Some(d),
                set,
                &mut |e| on_event(Event::Score(e)),
            )?)?;
        }
        generated.insert(target.clone(), dirs);
        timed(&format!("score dnd {target}"), t);

        if cfg.oracle_trajectory > 0 {
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
                }
                .to_string();
                let r = score(ctx.llm, &store, &spec, &label, Some(&dir), set, &mut |e| {
                    on_event(Event::Score(e))
                })?;
                points.push((step, r[0].metrics[&r[0].primary].value));
                keep(r)?;
            }
            trajectories.insert(target.clone(), points);
            timed(&format!("oracle trajectory {target}"), t);
        }

        on_event(Event::Phase(&format!("{target}: uniform average")));
        let t = Instant::now();
        let avg = paths.work.join("adapters").join(target).join("uniform-avg");
        if !avg.is_dir() {
            let mut ckpts = Vec::new();
            for o in &others {
                ckpts.extend(task_checkpoints(&cfg.collection, o)?);
            }
            let lora = baselines::uniform_average(&ckpts, model_cfg)?;
            let note = serde_json::json!({ "averaged_checkpoints": ckpts.len(), "tasks": others })
                .to_string();
            save_adapter(
                &lora,
                &ctx.model_path.display().to_string(),
                &avg,
                &[("uniform_average.json", note)],
            )?;
        }
        keep(score(
            ctx.llm,
            &store,
            &spec,
            &RunLabel::UniformAverage(target.clone()).to_string(),
            Some(&avg),
            set,
            &mut |e| on_event(Event::Score(e)),
        )?)?;
        timed(&format!("uniform average {target}"), t);
    }

    on_event(Event::Phase(
        "PCA of training checkpoints and generated adapters",
    ));
    let t = Instant::now();
    let mut flat = Flattener {
        model: model_cfg,
        stride: None,
    };
    let (pca_points, explained) = pca_points(cfg, &tasks, &generated, &mut flat)?;
    let mut positions = positions(cfg, paths, &tasks, &generated, &mut flat)?;
    timed("pca", t);

    let get = |label: &RunLabel, task: &str| -> Result<Score> {
        runs.get(&(label.to_string(), task.to_string()))
            .map(Score::from_run)
            .ok_or_else(|| ExperimentError::Config(format!("no score for {label} on {task}")))
    };
    // Every training task against every target: the nearest-prompt pick and the report's table.
    let prompt_cosines: Vec<(String, String, f64)> = tasks
        .iter()
        .flat_map(|o| targets.iter().map(move |t| (o, t)))
        .filter(|(o, t)| o != t)
        .map(|(o, t)| {
            let c = baselines::cosine(&embeddings[t.as_str()], &embeddings[o.as_str()]);
            (o.clone(), t.clone(), c)
        })
        .collect();
    let mut results = Vec::new();
    for target in &targets {
        let others: Vec<&String> = tasks.iter().filter(|t| *t != target).collect();
        let loras = others
            .iter()
            .map(|o| get(&RunLabel::Lora(o.to_string()), target))
            .collect::<Result<Vec<_>>>()?;
        let (nearest, cos) = prompt_cosines
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
                get(&dnd, target)
            })
            .collect::<Result<Vec<_>>>()?;
        let m = &manifests[target];
        let mut row = TargetResult::new(
            target,
            get(&RunLabel::Base, target)?,
            loras,
            get(&RunLabel::UniformAverage(target.clone()), target)?,
            (get(&RunLabel::Lora(nearest.clone()), target)?, nearest, cos),
            get(&RunLabel::Lora(target.clone()), target)?,
            dnd,
            generation_s[target].clone(),
            oracle_seconds(&index, target),
            (
                m.steps.iter().map(|s| s.seconds).sum(),
                generator_wall[target],
            ),
            m.validations.last().map(|v| v.loss),
            m.baseline_mean_checkpoint,
        );
        row.oracle_trajectory = trajectories.remove(target).unwrap_or_default();
        row.oracle_steps = oracle_steps(&cfg.collection, target)?;
        row.dnd_position = positions.remove(target);
        results.push(row);
    }
    let matrix = tasks
        .iter()
        .flat_map(|l| targets.iter().map(move |t| (l.clone(), t.clone())))
        .filter_map(|(l, t)| {
            runs.get(&(RunLabel::Lora(l.clone()).to_string(), t.clone()))
                .map(|r| (l, t, r.metrics[&r.primary].value))
        })
        .collect();
    let work_s = runs.values().map(|r| r.wall_s).sum::<f64>();
    phase_s.push(("total".into(), started.elapsed().as_secs_f64()));
    let report = Report {
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
            .map(|m: &TrainManifest| (m.decoder.clone(), m.parameters)),
        protocol: cfg.eval.protocol.name().into(),
        collection_wall_s: index.wall_time_s,
        scoring_compute_s: work_s,
        phase_wall_s: phase_s,
        comparisons: Report::compare_all(&results),
        targets: results,
        lora_matrix: matrix,
        prompt_cosines,
        pca: pca_points,
        pca_explained: explained,
    };
    report.write(&paths.results, &manifests)?;
    Ok(report)
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
    others: &[String],
    dir: &Path,
    target: &str,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<TrainManifest> {
    if let Ok(m) = read_json::<TrainManifest>(&dir.join(TRAIN_MANIFEST_FILE)) {
        // The maps before the last layer are the one decoder setting the experiment varies; a
        // generator built with another number must not be taken for this experiment's.
        let hidden = m.decoder.stages.iter().rev().nth(1).map(|s| s[0]);
        if hidden != Some(cfg.decoder_hidden) {
            return Err(ExperimentError::Config(format!(
                "{} holds a generator with {hidden:?} maps before its last layer, not {}: give this \
                 setting its own --name",
                dir.display(),
                cfg.decoder_hidden
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
    target: &str,
    gen_dir: &Path,
) -> Result<Vec<PathBuf>> {
    let dir = paths.work.join("adapters").join(target);
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
    let prompts = task_prompts(target, &cfg.data, Part::Prompts)?;
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
    tasks: &[String],
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
        if cached.tasks.contains_key(t) {
            continue;
        }
        let prompts = task_prompts(t, &cfg.data, Part::Prompts)?;
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let states = enc.encode(&refs)?;
        cached
            .tasks
            .insert(t.clone(), baselines::mean_pooled(&states)?);
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
