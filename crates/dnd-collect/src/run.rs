//! A resumable training run. Progress lives in one file, `run-state.safetensors` (LoRA values, AdamW
//! moments, per-step records), replaced atomically after every saved checkpoint and every
//! `state_every` steps. A rerun continues from it: the data order is a function of the step, so the
//! continued run computes exactly what an uninterrupted one would, and checkpoints written after the
//! last state (possibly half-written) are deleted and redone.

use crate::data::{batch_indices, EncodeStats, Sequence};
use crate::error::{io_err, CollectError, Result};
use crate::plot::loss_png;
use crate::trainer::{LoraTrainConfig, StepRecord, Trainer};
use candle_core::{DType, Device, Tensor};
use dnd_llm::{peft, Lora, Transformer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

pub const STATE_FILE: &str = "run-state.safetensors";
pub const RUN_MANIFEST_FILE: &str = "manifest.json";
pub const RUN_LOSS_PNG: &str = "loss.png";
pub const CHECKPOINTS_DIR: &str = "checkpoints";

/// Which steps leave an adapter behind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Saves {
    /// Only the final adapter, written into the run directory itself (which is then a PEFT directory).
    Final,
    /// Every step from this one (1-based) on, as `checkpoints/step-NNNN/`.
    EveryStepFrom(usize),
}

/// The base model a run adapts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseModel {
    pub path: String,
    pub sha256: String,
}

/// Where the training sequences came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    pub root: String,
    /// The split part trained on (`adapter-train`).
    pub part: String,
    pub split_seed: u64,
    pub encoded: EncodeStats,
    /// sha256 over every sequence's token ids and context length: the exact training data.
    pub tokens_sha256: String,
}

impl DataInfo {
    pub fn tokens_hash(seqs: &[Sequence]) -> String {
        let mut h = Sha256::new();
        for s in seqs {
            h.update((s.ids.len() as u64).to_le_bytes());
            h.update((s.context_len as u64).to_le_bytes());
            for id in &s.ids {
                h.update(id.to_le_bytes());
            }
        }
        hex::encode(h.finalize())
    }
}

/// The float type saved checkpoints are stored in (training is f32 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    #[default]
    F32,
    /// Half the disk; its rounding (relative 2^-11) is far below the spread of a task's checkpoints.
    F16,
    Bf16,
}

impl Storage {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Storage::F32 => candle_core::DType::F32,
            Storage::F16 => candle_core::DType::F16,
            Storage::Bf16 => candle_core::DType::BF16,
        }
    }

    fn is_f32(&self) -> bool {
        *self == Storage::F32
    }
}

/// What a run is: everything that decides its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub task: String,
    pub base_model: BaseModel,
    pub data: DataInfo,
    pub train: LoraTrainConfig,
    pub saves: Saves,
    /// Absent (f32) in runs made before it could be chosen, whose fingerprints stay as they were.
    #[serde(default, skip_serializing_if = "Storage::is_f32")]
    pub storage: Storage,
}

impl RunSpec {
    /// A hash of what decides the adapters' bytes (not where the files live).
    pub fn fingerprint(&self) -> String {
        let mut key = serde_json::json!({
            "task": self.task,
            "base_sha256": self.base_model.sha256,
            "data": {"part": self.data.part, "split_seed": self.data.split_seed,
                     "tokens_sha256": self.data.tokens_sha256},
            "train": self.train,
            "saves": self.saves,
        });
        if !self.storage.is_f32() {
            key["storage"] = serde_json::json!(self.storage);
        }
        hex::encode(Sha256::digest(key.to_string().as_bytes()))
    }
}

/// One invocation's share of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub first_step: usize,
    pub last_step: usize,
    pub seconds: f64,
}

/// `manifest.json`: the run's settings and history; `complete` once every step and file is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(flatten)]
    pub spec: RunSpec,
    pub complete: bool,
    pub fingerprint: String,
    /// Adapter directories relative to the run directory, in step order.
    pub checkpoints: Vec<String>,
    pub steps: Vec<StepRecord>,
    /// Wall time of the sessions that produced the kept steps (data preparation, training, writing).
    pub wall_time_s: f64,
    pub sessions: Vec<Session>,
    pub train_tokens: usize,
    /// Real tokens per second of training compute (forward, backward, update).
    pub train_tokens_per_s: f64,
    pub peak_rss_mb: f64,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Self> {
        dnd_io::read_json(path)
    }
}

/// How this invocation runs.
pub struct RunOptions<'a> {
    /// Persist the state at least every this many steps even where no checkpoint is saved.
    pub state_every: usize,
    /// Stop after this many updates in this call, as a kill between two steps would: nothing beyond
    /// the regular saves is written (tests, time-boxing).
    pub stop_after: Option<usize>,
    /// When work on this run began (before data preparation), for wall times.
    pub started: Instant,
    pub on_step: &'a mut dyn FnMut(&StepRecord),
}

pub enum RunOutcome {
    /// Every step done (possibly by an earlier invocation).
    Complete(Box<Manifest>),
    /// Stopped early by `stop_after`, after this many steps in all.
    Stopped(usize),
}

fn checkpoint_name(step: usize) -> String {
    format!("step-{step:04}")
}

/// Train (or continue training) `spec` on `seqs` in `dir`.
pub fn run(
    model: &Transformer,
    seqs: &[Sequence],
    spec: &RunSpec,
    dir: &Path,
    opts: &mut RunOptions<'_>,
) -> Result<RunOutcome> {
    let fingerprint = spec.fingerprint();
    let manifest_path = dir.join(RUN_MANIFEST_FILE);
    if manifest_path.is_file() {
        let m = Manifest::read(&manifest_path)?;
        if m.fingerprint != fingerprint {
            return Err(CollectError::Mismatch {
                dir: dir.into(),
                reason: describe_difference(&m.spec, spec),
            });
        }
        if m.complete {
            return Ok(RunOutcome::Complete(Box::new(m)));
        }
    }
    if seqs.is_empty() {
        return Err(CollectError::Data {
            task: spec.task.clone(),
            reason: "no training sequences".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    // A run killed mid-write (preempted, requeued) leaves its unfinished temporary files here.
    dnd_io::remove_temps(dir)?;
    let cfg = &spec.train;
    let init = Lora::init(cfg.lora_config()?, model.config(), cfg.seed, model.dtype())?;
    let mut trainer = Trainer::new(model, &init, cfg)?;
    let state_path = dir.join(STATE_FILE);
    let (mut records, mut sessions) = if state_path.is_file() {
        load_state(&state_path, &fingerprint, &mut trainer)?
    } else {
        (Vec::new(), Vec::new())
    };
    let done = trainer.step_count();
    if done > 0 {
        tracing::info!("{}: resuming after step {done}", spec.task);
    }
    remove_stale_checkpoints(dir, done)?;
    let first = done + 1;
    sessions.push(Session {
        first_step: first,
        last_step: done,
        seconds: 0.0,
    });
    for (this_call, step) in (first..=cfg.steps).enumerate() {
        if opts.stop_after.is_some_and(|n| this_call >= n) {
            return Ok(RunOutcome::Stopped(step - 1));
        }
        let idx = batch_indices(seqs.len(), cfg.batch, step, cfg.seed);
        let batch: Vec<&Sequence> = idx.iter().map(|&i| &seqs[i]).collect();
        let rec = trainer.step(&batch)?;
        (opts.on_step)(&rec);
        records.push(rec);
        let saved = matches!(spec.saves, Saves::EveryStepFrom(f) if step >= f);
        if saved {
            save_checkpoint(dir, step, trainer.lora(), spec)?;
        }
        if saved || step % opts.state_every.max(1) == 0 || step == cfg.steps {
            let last = sessions.last_mut().expect("pushed above");
            last.last_step = step;
            last.seconds = opts.started.elapsed().as_secs_f64();
            save_state(&state_path, &fingerprint, &trainer, &records, &sessions)?;
            write_manifest(dir, spec, &fingerprint, &records, &sessions, false)?;
        }
    }
    if spec.saves == Saves::Final {
        peft::save_as(
            trainer.lora(),
            dir,
            &spec.base_model.path,
            spec.storage.dtype(),
        )?;
    }
    let first_checkpoint = match spec.saves {
        Saves::EveryStepFrom(f) => Some(f),
        Saves::Final => None,
    };
    loss_png(
        &dir.join(RUN_LOSS_PNG),
        &spec.task,
        &records,
        first_checkpoint,
    )?;
    let last = sessions.last_mut().expect("pushed above");
    last.seconds = opts.started.elapsed().as_secs_f64();
    let manifest = write_manifest(dir, spec, &fingerprint, &records, &sessions, true)?;
    std::fs::remove_file(&state_path).map_err(io_err(&state_path))?;
    Ok(RunOutcome::Complete(Box::new(manifest)))
}

fn describe_difference(old: &RunSpec, new: &RunSpec) -> String {
    if old.base_model.sha256 != new.base_model.sha256 {
        "another base model".into()
    } else if old.train != new.train {
        "other training settings".into()
    } else if old.data != new.data {
        "other training data".into()
    } else if old.task != new.task {
        format!("task `{}`", old.task)
    } else if old.storage != new.storage {
        format!("checkpoints stored as {:?}", old.storage)
    } else {
        "other checkpoint saving".into()
    }
}

/// Write one checkpoint as a PEFT directory: built under a temporary name, then renamed, so a
/// `step-NNNN` directory is always whole.
fn save_checkpoint(dir: &Path, step: usize, lora: &Lora, spec: &RunSpec) -> Result<()> {
    let dst = dir.join(CHECKPOINTS_DIR).join(checkpoint_name(step));
    let (base, dtype) = (&spec.base_model.path, spec.storage.dtype());
    dnd_io::replace_dir(&dst, |tmp| {
        Ok::<_, CollectError>(peft::save_as(lora, tmp, base, dtype)?)
    })
}

/// Delete temporary directories and checkpoints newer than the resumed state: they belong to steps
/// that will be redone.
fn remove_stale_checkpoints(dir: &Path, done: usize) -> Result<()> {
    let root = dir.join(CHECKPOINTS_DIR);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(());
    };
    for e in entries {
        let e = e.map_err(io_err(&root))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let step = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok());
        if step.is_none_or(|s| s > done) {
            let p = e.path();
            std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
        }
    }
    Ok(())
}

fn checkpoint_list(dir: &Path) -> Result<Vec<String>> {
    let root = dir.join(CHECKPOINTS_DIR);
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries {
            let name = e.map_err(io_err(&root))?.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("step-") {
                out.push(format!("{CHECKPOINTS_DIR}/{name}"));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn write_manifest(
    dir: &Path,
    spec: &RunSpec,
    fingerprint: &str,
    records: &[StepRecord],
    sessions: &[Session],
    complete: bool,
) -> Result<Manifest> {
    let tokens: usize = records.iter().map(|r| r.tokens).sum();
    let compute: f64 = records.iter().map(|r| r.seconds).sum();
    let manifest = Manifest {
        spec: spec.clone(),
        complete,
        fingerprint: fingerprint.into(),
        checkpoints: checkpoint_list(dir)?,
        steps: records.to_vec(),
        wall_time_s: sessions.iter().map(|s| s.seconds).sum(),
        sessions: sessions.to_vec(),
        train_tokens: tokens,
        train_tokens_per_s: if compute > 0.0 {
            tokens as f64 / compute
        } else {
            0.0
        },
        peak_rss_mb: dnd_io::peak_rss_mb(),
    };
    dnd_io::write_json::<_, CollectError>(&dir.join(RUN_MANIFEST_FILE), &manifest)?;
    Ok(manifest)
}

const RECORD_FIELDS: usize = 7;
const SESSION_FIELDS: usize = 3;

fn save_state(
    path: &Path,
    fingerprint: &str,
    trainer: &Trainer<'_>,
    records: &[StepRecord],
    sessions: &[Session],
) -> Result<()> {
    let dev = &Device::Cpu;
    let mut tensors: HashMap<String, Tensor> = trainer.state()?.into_iter().collect();
    let rec: Vec<f64> = records
        .iter()
        .flat_map(|r| {
            [
                r.step as f64,
                r.loss,
                r.lr,
                r.grad_norm,
                r.tokens as f64,
                r.targets as f64,
                r.seconds,
            ]
        })
        .collect();
    let ses: Vec<f64> = sessions
        .iter()
        .flat_map(|s| [s.first_step as f64, s.last_step as f64, s.seconds])
        .collect();
    tensors.insert(
        "run.records".into(),
        Tensor::from_vec(rec, (records.len(), RECORD_FIELDS), dev)?,
    );
    tensors.insert(
        "run.sessions".into(),
        Tensor::from_vec(ses, (sessions.len(), SESSION_FIELDS), dev)?,
    );
    tensors.insert(
        "run.fingerprint".into(),
        Tensor::new(fingerprint.as_bytes(), dev)?,
    );
    // The rename is the commit point: a state file that exists is whole.
    dnd_io::write_atomic_with(path, |tmp| {
        Ok::<_, CollectError>(candle_core::safetensors::save(&tensors, tmp)?)
    })
}

fn load_state(
    path: &Path,
    fingerprint: &str,
    trainer: &mut Trainer<'_>,
) -> Result<(Vec<StepRecord>, Vec<Session>)> {
    let bad = |reason: String| CollectError::State {
        path: path.into(),
        reason,
    };
    let tensors =
        candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| bad(e.to_string()))?;
    let get = |k: &str| tensors.get(k).ok_or_else(|| bad(format!("`{k}` missing")));
    let saved = get("run.fingerprint")?
        .to_dtype(DType::U8)?
        .to_vec1::<u8>()?;
    if saved != fingerprint.as_bytes() {
        return Err(CollectError::Mismatch {
            dir: path.parent().unwrap_or(path).into(),
            reason: "its run state was written for other settings".into(),
        });
    }
    trainer.load_state(&tensors)?;
    let records: Vec<StepRecord> = get("run.records")?
        .to_vec2::<f64>()?
        .into_iter()
        .map(|r| StepRecord {
            step: r[0] as usize,
            loss: r[1],
            lr: r[2],
            grad_norm: r[3],
            tokens: r[4] as usize,
            targets: r[5] as usize,
            seconds: r[6],
        })
        .collect();
    if records.len() != trainer.step_count() {
        return Err(bad(format!(
            "{} step records for {} optimizer steps",
            records.len(),
            trainer.step_count()
        )));
    }
    let sessions = get("run.sessions")?
        .to_vec2::<f64>()?
        .into_iter()
        .map(|s| Session {
            first_step: s[0] as usize,
            last_step: s[1] as usize,
            seconds: s[2],
        })
        .collect();
    Ok((records, sessions))
}
