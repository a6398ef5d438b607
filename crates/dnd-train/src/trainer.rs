//! The training loop: prompt/checkpoint pairs with fresh prompts at every step, noise augmentation,
//! AdamW with warm-up + cosine and clipping, validation against the mean-checkpoint baselines, and
//! atomic periodic checkpoints from which a rerun continues bit for bit.
//!
//! Every random choice of step `s` comes from ChaCha8 seeded with `seed`, stream `s`: a resumed run
//! needs no RNG state, only the decoder, the optimizer and the step.

use crate::data::{token_weights, weighted_mask, weighted_mse, TrainingTask};
use crate::eigen::gram_eigen;
use crate::plot::loss_png;
use crate::probe::{condition_probe, ConditionProbe};
use crate::sft::Sft;
use crate::{io_err, Result, TrainError};
use candle_core::{DType, Device, Tensor, Var};
use dnd_decode::{BasisHead, DecoderConfig, GeneratorMeta, Head, HyperConvDecoder};
use dnd_generate::{condition, draw, with_offset, ConditionNorm, GeneratorInfo};
use dnd_optim::{clip_grad_norm, AdamW, AdamWConfig, Schedule};
use dnd_tokenize::{Factor, TokenInfo};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

pub const TRAIN_MANIFEST_FILE: &str = "train.json";
pub const WEIGHTS_FILE: &str = "loss_weights.safetensors";
pub const TRAIN_LOSS_PNG: &str = "loss.png";
const STATE_DIR: &str = "state";
const LATEST: &str = "LATEST";
const OPTIM_FILE: &str = "optimizer.safetensors";
const PROGRESS_FILE: &str = "progress.json";
/// Stream offset for validation draws, far from any step's stream.
const VALIDATION_STREAM: u64 = 1 << 62;

/// Hyper-parameters; defaults are the paper's (docs/method.md step 6) except the step count and the learning
/// rate, sized for a 2-core CPU, and three additions (`residual`, `min_weight`, `standardize`). At the
/// paper's lr of 3e-5 the CPU decoder barely moves (held-out loss 0.84 after 50 steps against 0.51 for
/// the mean checkpoint). With the basis head, 600 updates at 3e-4 reach 5% of the mean checkpoint's
/// held-out loss in 12 minutes; 1e-3 oscillates and 1e-4 is slow. The paper's last layer trains best
/// at 1e-3 (results/generator/README.md has the curves). [`Preset::Paper`] gives the paper's values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorTrainConfig {
    pub steps: usize,
    /// Prompt/checkpoint pairs per update (one decoder forward over all of them).
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup: usize,
    pub clip: f64,
    /// Std of the Gaussian noise added to the condition and to the target tokens.
    pub condition_noise: f64,
    pub target_noise: f64,
    /// Lowest per-token loss weight (before renormalising to mean 1), see [`token_weights`].
    pub min_weight: f64,
    pub seed: u64,
    /// Predict each checkpoint as the mean training checkpoint plus the decoder's output, instead of
    /// the whole tokens (the paper). Every checkpoint shares the LoRA initialisation, so most of a
    /// token (the random A factors) is task-independent; a CPU-sized decoder, whose last layer mixes
    /// only a few dozen maps, cannot reproduce thousands of random patterns, and spends its capacity
    /// failing to (measured: held-out loss above the mean checkpoint's without the offset).
    pub residual: bool,
    /// Every k-th checkpoint of the collection, counted across tasks, is held out for validation (0 or
    /// 1: none; never a task's only checkpoint).
    pub holdout_every: usize,
    /// Share of training pairs that mix two tasks (0: none, the paper's pairs only). A mixed pair
    /// conditions on k prompts of one task and N−k of another and targets the same interpolation,
    /// (k/N)·checkpoint + (1−k/N)·checkpoint, of one checkpoint of each (in token space). With a
    /// handful of training tasks the decoder otherwise sees a few isolated conditions; mixing asks it
    /// to respond smoothly to where a prompt batch lies between tasks, which a held-out task needs.
    #[serde(default)]
    pub mix: f64,
    /// Weight every token alike instead of by how much it moves within a task (docs/method.md step 6).
    #[serde(default)]
    pub uniform_weights: bool,
    /// Standardise the prompt states channel by channel with statistics of the training prompts,
    /// stored with the generator ([`ConditionNorm`]). Absent in older manifests: off.
    #[serde(default)]
    pub standardize: bool,
    /// What the decoder minimises (absent in older manifests: reconstruction).
    #[serde(default)]
    pub objective: Objective,
    /// `hybrid`: the SFT loss's weight next to the reconstruction loss.
    #[serde(default = "one")]
    pub sft_weight: f64,
    /// `sft`, `hybrid`: labelled sequences of the pair's task per pair and update.
    #[serde(default = "four")]
    pub sft_batch: usize,
    /// Keep the basis head's directions at their start (the training checkpoints' principal
    /// directions) and learn only how the prompts mix them. With hundreds of tasks the directions
    /// that hold the tasks' differences number in the hundreds (results/generator/README.md); frozen,
    /// they cost no optimizer state (two more copies of `K x` an adapter's size) and no update.
    #[serde(default)]
    pub freeze_basis: bool,
    pub validate_every: usize,
    pub save_every: usize,
}

impl Default for GeneratorTrainConfig {
    fn default() -> Self {
        Self {
            steps: 600,
            batch: 1,
            lr: 3e-4,
            weight_decay: 0.1,
            warmup: 1,
            clip: 1.0,
            condition_noise: 1e-4,
            target_noise: 1e-5,
            min_weight: 0.05,
            seed: 0,
            residual: true,
            holdout_every: 5,
            mix: 0.0,
            uniform_weights: false,
            standardize: true,
            objective: Objective::Reconstruction,
            sft_weight: 1.0,
            sft_batch: 4,
            freeze_basis: false,
            validate_every: 50,
            save_every: 50,
        }
    }
}

/// The generator's training objective (docs/method.md step 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// The paper's: weighted MSE to the checkpoints' tokens.
    #[default]
    Reconstruction,
    /// The base LLM's answer-token loss with the generated adapter, on the pair's task's labelled
    /// examples ([`Sft`]).
    Sft,
    /// Reconstruction plus `sft_weight` times SFT.
    Hybrid,
}

impl Objective {
    pub fn needs_llm(self) -> bool {
        self != Objective::Reconstruction
    }
}

fn one() -> f64 {
    1.0
}

fn four() -> usize {
    4
}

/// The basis head's K in the dnd preset: twice the 8 tasks of the default collection, so the task
/// means' 7 directions and the main within-task directions both fit.
pub const DEFAULT_BASIS_K: usize = 16;

/// A named starting point for every generator setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preset {
    /// This project's defaults: [`GeneratorTrainConfig::default`] and the basis head.
    #[default]
    Dnd,
    /// The method as published (docs/method.md step 6), scaled to the CPU only where it must be: the
    /// paper's last layer, whole tokens instead of offsets from the mean, its learning rate 3e-5 and
    /// the low end of its 1000-5000 steps, its loss weights without dnd's floor, raw encoder states;
    /// the decoder's size and N stay the CPU's.
    Paper,
}

impl Preset {
    pub fn train_config(self) -> GeneratorTrainConfig {
        match self {
            Preset::Dnd => GeneratorTrainConfig::default(),
            Preset::Paper => GeneratorTrainConfig {
                steps: 1000,
                lr: 3e-5,
                residual: false,
                min_weight: 0.0,
                standardize: false,
                ..GeneratorTrainConfig::default()
            },
        }
    }

    /// The decoder's last layer.
    pub fn head(self) -> Head {
        match self {
            Preset::Dnd => Head::Basis { k: DEFAULT_BASIS_K },
            Preset::Paper => Head::Conv,
        }
    }
}

/// One update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    /// Weighted MSE of the batch before the update.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub seconds: f64,
    /// The batch's SFT loss before the update (`sft` and `hybrid` objectives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sft_loss: Option<f64>,
}

/// Loss on the held-out checkpoints after `step` updates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValLog {
    pub step: usize,
    pub loss: f64,
    /// The same per training task (in the manifest's task order; `None` for a task with nothing held
    /// out): where the remaining loss sits.
    #[serde(default)]
    pub per_task: Vec<Option<f64>>,
}

/// A task as the manifest reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    pub name: String,
    pub train_checkpoints: usize,
    pub held_out_checkpoints: usize,
    pub prompts: usize,
}

/// `train.json`: what was trained on, how, and how it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainManifest {
    /// The collection directory, as `dnd_assets::portable_name` writes it.
    pub collection: String,
    pub tasks: Vec<TaskSummary>,
    pub config: GeneratorTrainConfig,
    pub decoder: DecoderConfig,
    pub parameters: usize,
    pub generator: GeneratorMeta,
    pub step: usize,
    pub complete: bool,
    /// Held-out loss of predicting the mean of all training checkpoints (the paper's baseline), and of
    /// predicting the mean of the held-out checkpoint's own task (an oracle that knows the task).
    pub baseline_mean_checkpoint: Option<f64>,
    pub baseline_task_mean: Option<f64>,
    /// Held-out loss of a generator that reads prompts as well as the [`ConditionProbe`]: for task t
    /// it emits the task means weighted by the probe's confusion row t (the mean squared error's best
    /// answer when t's prompts look like u's that often). What a decoder that decodes perfectly
    /// would reach from a condition this separable.
    #[serde(default)]
    pub baseline_probe_task_mean: Option<f64>,
    /// Whether the prompt encoder's states tell the training tasks apart (absent in older manifests).
    #[serde(default)]
    pub condition_probe: Option<ConditionProbe>,
    /// Mean loss weight of the A and of the B tokens.
    pub weight_a: f64,
    pub weight_b: f64,
    pub steps: Vec<StepLog>,
    pub validations: Vec<ValLog>,
    /// Mean compute time of an update over the logged steps.
    pub seconds_per_step: f64,
}

/// What the caller fixes about a run besides the hyper-parameters.
pub struct Setup {
    /// The generator directory (also holds the resumable state under `state/`).
    pub out: PathBuf,
    pub decoder: DecoderConfig,
    pub meta: GeneratorMeta,
    pub info: GeneratorInfo,
    pub collection: String,
    /// The tokenizer's loss mask `[N_w, H, W]` and token layout.
    pub mask: Tensor,
    pub tokens: Vec<TokenInfo>,
    /// The base model and labelled sequences the `sft` and `hybrid` objectives train through.
    pub sft: Option<Sft>,
}

#[derive(Serialize, Deserialize)]
struct Progress {
    config: GeneratorTrainConfig,
    steps: Vec<StepLog>,
    validations: Vec<ValLog>,
}

/// Held-out losses of fixed predictions (see the fields of [`TrainManifest`] of the same names).
#[derive(Default)]
struct Baselines {
    mean_checkpoint: Option<f64>,
    task_mean: Option<f64>,
    probe_task_mean: Option<f64>,
}

/// A generator being trained, fresh or resumed from `out/state`.
pub struct GeneratorTrainer {
    setup: Setup,
    config: GeneratorTrainConfig,
    tasks: Vec<TrainingTask>,
    /// (task, checkpoint) pairs trained on, grouped by task, and the held-out ones.
    train: Vec<Vec<usize>>,
    held: Vec<(usize, usize)>,
    decoder: HyperConvDecoder,
    opt: AdamW,
    weights: Tensor,
    wmask: Tensor,
    /// Added to the decoder's output when `config.residual`: the mean training checkpoint.
    offset: Option<Tensor>,
    /// Applied to every task's prompts at the start when `config.standardize`.
    norm: Option<ConditionNorm>,
    cells: f64,
    steps: Vec<StepLog>,
    validations: Vec<ValLog>,
    baselines: Baselines,
    probe: Option<ConditionProbe>,
}

impl GeneratorTrainer {
    /// Prepare training; continues from the last saved state in `setup.out` if there is one (with the
    /// same config, else an error).
    pub fn open(
        setup: Setup,
        mut tasks: Vec<TrainingTask>,
        config: GeneratorTrainConfig,
    ) -> Result<Self> {
        validate(&setup, &tasks, &config)?;
        let norm = if config.standardize {
            Some(standardize(&mut tasks)?)
        } else {
            None
        };
        let (train, held) = split_held_out(&tasks, config.holdout_every);
        let weights = if config.uniform_weights {
            Tensor::ones(setup.mask.dim(0)?, DType::F32, setup.mask.device())?
        } else {
            token_weights(&tasks, &setup.mask, config.min_weight)?
        };
        let (wmask, cells) = weighted_mask(&weights, &setup.mask)?;
        // The mean training checkpoint: the offset the decoder predicts from (when `residual`) and
        // the paper's baseline prediction.
        let tasks_ref = &tasks;
        let train_mean = mean_of(
            train
                .iter()
                .enumerate()
                .flat_map(|(t, idx)| idx.iter().map(move |&i| tasks_ref[t].checkpoint(i))),
        )?;
        let offset = config.residual.then(|| train_mean.clone());
        let (decoder, opt, steps, validations) = match resume(&setup, &config)? {
            Some(resumed) => resumed,
            None => {
                let mut decoder =
                    HyperConvDecoder::new(setup.decoder.clone(), DType::F32, config.seed)?;
                if let Some(head) = decoder.head() {
                    let rows = basis_rows(&tasks, &train);
                    init_basis(head, rows, &train_mean, config.residual)?;
                }
                let opt = AdamW::new(trainable(&mut decoder, &config), adamw(&config))?;
                (decoder, opt, Vec::new(), Vec::new())
            }
        };
        let mut me = Self {
            setup,
            config,
            tasks,
            train,
            held,
            decoder,
            opt,
            weights,
            wmask,
            offset,
            norm,
            cells,
            steps,
            validations,
            baselines: Baselines::default(),
            probe: None,
        };
        me.probe = condition_probe(&me.tasks, me.decoder.config().input()[0])?;
        me.baselines = me.baselines(&train_mean)?;
        Ok(me)
    }

    /// The tokens the generator emits for conditions `[B, N, L, C]`: the decoder's output, plus the
    /// mean training checkpoint when it predicts offsets.
    pub fn predict(&self, cond: &Tensor) -> Result<Tensor> {
        Ok(with_offset(
            self.decoder.forward(cond)?,
            self.offset.as_ref(),
        )?)
    }

    pub fn step_count(&self) -> usize {
        self.steps.len()
    }

    pub fn decoder(&self) -> &HyperConvDecoder {
        &self.decoder
    }

    /// The linear probe on the training tasks' prompts (`None` for a single task).
    pub fn condition_probe(&self) -> Option<&ConditionProbe> {
        self.probe.as_ref()
    }

    /// Held-out loss of the global-mean and own-task-mean predictions.
    pub fn baseline_losses(&self) -> (Option<f64>, Option<f64>) {
        (self.baselines.mean_checkpoint, self.baselines.task_mean)
    }

    /// Train up to `config.steps` (or `stop_after` more updates, as a kill would), validating and
    /// saving periodically; at the end, validate, save and write the manifest and loss curve.
    pub fn run(
        &mut self,
        stop_after: Option<usize>,
        on_step: &mut dyn FnMut(&StepLog, Option<&ValLog>),
    ) -> Result<TrainManifest> {
        let start = self.steps.len();
        while self.steps.len() < self.config.steps {
            if stop_after.is_some_and(|n| self.steps.len() - start >= n) {
                return self.manifest(false);
            }
            let log = self.step()?;
            let s = log.step;
            let val = if s.is_multiple_of(self.config.validate_every) || s == self.config.steps {
                self.validate()?
            } else {
                None
            };
            on_step(&log, val.as_ref());
            if s.is_multiple_of(self.config.save_every) || s == self.config.steps {
                self.save()?;
            }
        }
        if self.validations.is_empty() {
            self.validate()?;
        }
        self.save()?;
        self.manifest(true)
    }

    /// One update on a fresh batch.
    pub fn step(&mut self) -> Result<StepLog> {
        let t0 = Instant::now();
        let s = self.steps.len() + 1;
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        rng.set_stream(s as u64);
        let (cond, target, drawn) = self.batch(&mut rng)?;
        let pred = self.predict(&cond)?;
        let loss = weighted_mse(&pred, &target, &self.wmask, self.cells)?;
        let (objective, sft_loss) = match self.config.objective {
            Objective::Reconstruction => (loss.clone(), None),
            o => {
                let (surrogate, sft) = self.sft_surrogate(&pred, &drawn, &mut rng)?;
                let objective = match o {
                    Objective::Sft => surrogate,
                    _ => (&loss + (surrogate * self.config.sft_weight)?)?,
                };
                (objective, Some(sft))
            }
        };
        let store = objective.backward()?;
        let vars = self.opt.vars().to_vec();
        let mut grads = vars
            .iter()
            .map(|v| match store.get(v.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => Ok(v.as_tensor().zeros_like()?),
            })
            .collect::<Result<Vec<_>>>()?;
        let grad_norm = clip_grad_norm(&mut grads, self.config.clip)?;
        let lr = self.schedule().lr(s);
        self.opt.step(&grads, lr)?;
        let log = StepLog {
            step: s,
            loss: loss.to_dtype(DType::F64)?.to_scalar()?,
            lr,
            grad_norm,
            seconds: t0.elapsed().as_secs_f64(),
            sft_loss,
        };
        self.steps.push(log.clone());
        Ok(log)
    }

    /// A fresh batch of `config.batch` pairs drawn from `rng`: conditions `[B, N, L, C]` and targets
    /// `[B, N_w, H, W]`, both with their noise, and the task each pair was drawn for.
    fn batch(&self, rng: &mut ChaCha8Rng) -> Result<(Tensor, Tensor, Vec<usize>)> {
        let mut conds = Vec::new();
        let mut targets = Vec::new();
        let mut drawn = Vec::new();
        for _ in 0..self.config.batch {
            let task = rng.random_range(0..self.tasks.len());
            drawn.push(task);
            let ck = self.train[task][rng.random_range(0..self.train[task].len())];
            // Without mixing no extra number is drawn: runs stay as they were before the option.
            if self.config.mix > 0.0
                && self.tasks.len() > 1
                && rng.random::<f64>() < self.config.mix
            {
                let (cond, target) = self.mixed_pair(task, ck, rng)?;
                conds.push(cond);
                targets.push(target);
            } else {
                conds.push(self.condition(task, rng)?);
                targets.push(self.tasks[task].checkpoint(ck)?);
            }
        }
        let cond = add_noise(&Tensor::stack(&conds, 0)?, self.config.condition_noise, rng)?;
        let target = add_noise(&Tensor::stack(&targets, 0)?, self.config.target_noise, rng)?;
        Ok((cond, target, drawn))
    }

    /// For predictions `pred` `[B, N_w, H, W]` of pairs from tasks `drawn`: a scalar whose gradient
    /// with respect to `pred` is that of the batch's mean SFT loss (`sum(pred * g) / B`, `g` from
    /// [`Sft::loss_and_grad`]), and that loss.
    fn sft_surrogate(
        &self,
        pred: &Tensor,
        drawn: &[usize],
        rng: &mut ChaCha8Rng,
    ) -> Result<(Tensor, f64)> {
        let sft =
            self.setup.sft.as_ref().ok_or_else(|| {
                TrainError::Config("the SFT objective needs the base model".into())
            })?;
        let b = drawn.len() as f64;
        let mut terms = Vec::with_capacity(drawn.len());
        let mut total = 0.0;
        for (i, &task) in drawn.iter().enumerate() {
            let batch = sft.draw(task, self.config.sft_batch, rng);
            let tokens = pred.get(i)?;
            let (loss, grad) = sft.loss_and_grad(&tokens, &batch)?;
            terms.push((tokens * grad)?.sum_all()?);
            total += loss / b;
        }
        let surrogate = (Tensor::stack(&terms, 0)?.sum_all()? / b)?;
        Ok((surrogate, total))
    }

    /// Mean loss over the held-out checkpoints, each with a fixed prompt draw and no noise; `None`
    /// without held-out checkpoints.
    pub fn validate(&mut self) -> Result<Option<ValLog>> {
        let Some((loss, per_task)) = self.held_out_losses(|me, task, rng, _| {
            let cond = me.condition(task, rng)?.unsqueeze(0)?;
            Ok(me.predict(&cond)?.detach())
        })?
        else {
            return Ok(None);
        };
        let log = ValLog {
            step: self.steps.len(),
            loss,
            per_task,
        };
        self.validations.retain(|v| v.step != log.step);
        self.validations.push(log.clone());
        Ok(Some(log))
    }

    /// Write the resumable state (decoder, optimizer, progress) under `state/`, point `state/LATEST`
    /// at it, drop older states; then the usable generator, loss weights, manifest and loss curve.
    pub fn save(&self) -> Result<()> {
        let out = &self.setup.out;
        let states = out.join(STATE_DIR);
        let name = format!("step-{:06}", self.steps.len());
        let dir = states.join(&name);
        self.decoder.save(&dir, &self.setup.meta)?;
        // A finished run is never stepped again: its moments (twice the decoder's size) are not kept.
        if self.steps.len() < self.config.steps {
            self.opt.save(&dir.join(OPTIM_FILE))?;
        }
        let progress = Progress {
            config: self.config.clone(),
            steps: self.steps.clone(),
            validations: self.validations.clone(),
        };
        dnd_io::write_json::<_, TrainError>(&dir.join(PROGRESS_FILE), &progress)?;
        dnd_io::write_atomic(&states.join(LATEST), &name)?;
        for e in std::fs::read_dir(&states).map_err(io_err(&states))? {
            let e = e.map_err(io_err(&states))?;
            if e.path().is_dir() && e.file_name() != name.as_str() {
                std::fs::remove_dir_all(e.path()).map_err(io_err(&e.path()))?;
            }
        }
        dnd_generate::save(
            out,
            &self.decoder,
            &self.setup.meta,
            &self.setup.info,
            self.offset.as_ref(),
            self.norm.as_ref(),
        )?;
        let weights = [("weights".to_string(), self.weights.clone())].into();
        dnd_io::write_atomic_with(&out.join(WEIGHTS_FILE), |tmp| {
            Ok::<_, TrainError>(candle_core::safetensors::save(&weights, tmp)?)
        })?;
        let m = self.manifest(self.steps.len() >= self.config.steps)?;
        dnd_io::write_json::<_, TrainError>(&out.join(TRAIN_MANIFEST_FILE), &m)?;
        loss_png(&out.join(TRAIN_LOSS_PNG), &m)
    }

    /// The manifest as of now.
    pub fn manifest(&self, complete: bool) -> Result<TrainManifest> {
        let mean_of = |f: Factor| -> Result<f64> {
            let idx: Vec<u32> = (0..self.setup.tokens.len())
                .filter(|&i| self.setup.tokens[i].factor == f)
                .map(|i| i as u32)
                .collect();
            if idx.is_empty() {
                return Ok(0.0);
            }
            let idx = Tensor::new(idx.as_slice(), &Device::Cpu)?;
            Ok(self
                .weights
                .index_select(&idx, 0)?
                .mean_all()?
                .to_dtype(DType::F64)?
                .to_scalar()?)
        };
        let tasks = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| TaskSummary {
                name: t.name.clone(),
                train_checkpoints: self.train[i].len(),
                held_out_checkpoints: t.checkpoints.len() - self.train[i].len(),
                prompts: t.prompts.len(),
            })
            .collect();
        let n = self.steps.len().max(1) as f64;
        Ok(TrainManifest {
            collection: self.setup.collection.clone(),
            tasks,
            config: self.config.clone(),
            decoder: self.decoder.config().clone(),
            parameters: self.decoder.num_parameters(),
            generator: self.setup.meta.clone(),
            step: self.steps.len(),
            complete,
            baseline_mean_checkpoint: self.baselines.mean_checkpoint,
            baseline_task_mean: self.baselines.task_mean,
            baseline_probe_task_mean: self.baselines.probe_task_mean,
            condition_probe: self.probe.clone(),
            weight_a: mean_of(Factor::A)?,
            weight_b: mean_of(Factor::B)?,
            steps: self.steps.clone(),
            validations: self.validations.clone(),
            seconds_per_step: self.steps.iter().map(|s| s.seconds).sum::<f64>() / n,
        })
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            peak: self.config.lr,
            warmup: self.config.warmup,
            total: self.config.steps,
            floor: 0.0,
        }
    }

    /// A fresh draw of N prompts from `task`'s pool, as the condition `[N, L, C]`.
    fn condition(&self, task: usize, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        let [n, l, _] = self.decoder.config().input();
        let pool = &self.tasks[task].prompts;
        let idx = draw(pool.len(), n, rng)?;
        let states: Vec<&Tensor> = idx.iter().map(|&i| &pool[i]).collect();
        Ok(condition(&states, l)?)
    }

    /// A pair mixing `task` (checkpoint `ck`) with another task: k of the N prompts from `task`
    /// (1 <= k < N), the rest from the other, shuffled; the target interpolated with weight k/N.
    fn mixed_pair(&self, task: usize, ck: usize, rng: &mut ChaCha8Rng) -> Result<(Tensor, Tensor)> {
        let [n, l, _] = self.decoder.config().input();
        let other = (task + rng.random_range(1..self.tasks.len())) % self.tasks.len();
        let ck2 = self.train[other][rng.random_range(0..self.train[other].len())];
        let k = if n > 1 { rng.random_range(1..n) } else { n };
        let (a, b) = (&self.tasks[task].prompts, &self.tasks[other].prompts);
        let mut states: Vec<&Tensor> = draw(a.len(), k, rng)?.into_iter().map(|i| &a[i]).collect();
        states.extend(draw(b.len(), n - k, rng)?.into_iter().map(|i| &b[i]));
        states.shuffle(rng);
        let w = k as f64 / n as f64;
        let target = ((self.tasks[task].checkpoint(ck)? * w)?
            + (self.tasks[other].checkpoint(ck2)? * (1.0 - w))?)?;
        Ok((condition(&states, l)?, target))
    }

    /// Mean over the held-out checkpoints of the loss of `predict(self, task, rng, checkpoint)`.
    fn held_out_loss(
        &self,
        predict: impl Fn(&Self, usize, &mut ChaCha8Rng, usize) -> Result<Tensor>,
    ) -> Result<Option<f64>> {
        Ok(self.held_out_losses(predict)?.map(|(mean, _)| mean))
    }

    /// [`held_out_loss`](Self::held_out_loss), and the mean per task.
    #[allow(clippy::type_complexity)]
    fn held_out_losses(
        &self,
        predict: impl Fn(&Self, usize, &mut ChaCha8Rng, usize) -> Result<Tensor>,
    ) -> Result<Option<(f64, Vec<Option<f64>>)>> {
        if self.held.is_empty() {
            return Ok(None);
        }
        let mut sums = vec![(0.0, 0usize); self.tasks.len()];
        // Summed in held-out order, as before the per-task means existed: the same bytes.
        let mut total = 0.0;
        for (j, &(task, ck)) in self.held.iter().enumerate() {
            let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
            rng.set_stream(VALIDATION_STREAM + j as u64);
            let pred = predict(self, task, &mut rng, ck)?;
            let target = self.tasks[task].checkpoint(ck)?.unsqueeze(0)?;
            let loss = weighted_mse(&pred, &target, &self.wmask, self.cells)?;
            let loss = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            total += loss;
            sums[task].0 += loss;
            sums[task].1 += 1;
        }
        let mean = total / self.held.len() as f64;
        let per_task = sums
            .iter()
            .map(|&(s, n)| (n > 0).then(|| s / n as f64))
            .collect();
        Ok(Some((mean, per_task)))
    }

    /// Held-out losses of predicting `train_mean` (the mean of all training checkpoints), the mean of
    /// the own task's, and the mean of the task the probe takes the prompts for.
    fn baselines(&self, train_mean: &Tensor) -> Result<Baselines> {
        // Task means only where a baseline reads one: the held-out checkpoints' tasks, and the tasks
        // the probe reads their prompts as. One per task of a collection of hundreds takes gigabytes.
        let held: BTreeSet<usize> = self.held.iter().map(|&(t, _)| t).collect();
        let reads = |t: usize| -> Vec<(usize, f64)> {
            self.probe.as_ref().map_or(Vec::new(), |p| {
                let row = p.confusion[t].iter().copied().enumerate();
                row.filter(|&(_, c)| c != 0.0).collect()
            })
        };
        let mut needed = held.clone();
        for &t in &held {
            needed.extend(reads(t).into_iter().map(|(u, _)| u));
        }
        let means = needed
            .into_iter()
            .map(|t| {
                let m = mean_of(self.train[t].iter().map(|&i| self.tasks[t].checkpoint(i)))?;
                Ok((t, m.unsqueeze(0)?))
            })
            .collect::<Result<BTreeMap<usize, Tensor>>>()?;
        let all = train_mean.unsqueeze(0)?;
        let global = self.held_out_loss(|_, _, _, _| Ok(all.clone()))?;
        let own = self.held_out_loss(|_, task, _, _| Ok(means[&task].clone()))?;
        // The probe's reading of task t's prompts as a prediction: its choices' means, weighted
        // (zero weights skipped: they add exact zeros).
        let probed = match &self.probe {
            None => None,
            Some(_) => self.held_out_loss(|_, task, _, _| {
                reads(task)
                    .into_iter()
                    .try_fold(all.zeros_like()?, |mix, (u, c)| {
                        Ok((mix + (&means[&u] * c)?)?)
                    })
            })?,
        };
        Ok(Baselines {
            mean_checkpoint: global,
            task_mean: own,
            probe_task_mean: probed,
        })
    }
}

/// Element-wise mean of `tensors`, summed one at a time: stacked, a collection's training
/// checkpoints take gigabytes.
fn mean_of(tensors: impl IntoIterator<Item = Result<Tensor>>) -> Result<Tensor> {
    let mut it = tensors.into_iter();
    let first = it
        .next()
        .ok_or_else(|| TrainError::Data("no training checkpoints to average".into()))??;
    let (sum, n) = it.try_fold((first, 1usize), |(sum, n), t| {
        Ok::<_, TrainError>(((sum + t?)?, n + 1))
    })?;
    Ok((sum / n as f64)?)
}

/// What a resumed run continues from: decoder, optimizer, and the logs so far.
type Resumed = (HyperConvDecoder, AdamW, Vec<StepLog>, Vec<ValLog>);

/// The last saved state in `setup.out`, if there is one; an error if it was saved with other settings
/// or an unfinished run lacks its optimizer state.
fn resume(setup: &Setup, config: &GeneratorTrainConfig) -> Result<Option<Resumed>> {
    let latest = setup.out.join(STATE_DIR).join(LATEST);
    if !latest.is_file() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&latest).map_err(io_err(&latest))?;
    let dir = setup.out.join(STATE_DIR).join(name.trim());
    let progress: Progress = dnd_io::read_json::<_, TrainError>(&dir.join(PROGRESS_FILE))?;
    if progress.config != *config {
        return Err(TrainError::Config(format!(
            "{} holds a run with other settings ({:?}); train into another directory or start fresh",
            setup.out.display(),
            progress.config
        )));
    }
    let mut decoder = HyperConvDecoder::load(&dir, &setup.meta, DType::F32)?;
    let mut opt = AdamW::new(trainable(&mut decoder, config), adamw(config))?;
    let opt_path = dir.join(OPTIM_FILE);
    if opt_path.is_file() {
        opt.load(&opt_path)?;
    } else if progress.steps.len() < config.steps {
        return Err(TrainError::State {
            path: opt_path,
            reason: "the optimizer state of an unfinished run is missing".into(),
        });
    }
    Ok(Some((decoder, opt, progress.steps, progress.validations)))
}

/// Fit the condition's standardisation on every task's prompts and apply it to them.
fn standardize(tasks: &mut [TrainingTask]) -> Result<ConditionNorm> {
    let norm = ConditionNorm::fit(tasks.iter().flat_map(|t| &t.prompts))?;
    for t in tasks.iter_mut() {
        t.prompts = t
            .prompts
            .iter()
            .map(|p| norm.apply(p))
            .collect::<std::result::Result<_, _>>()?;
    }
    Ok(norm)
}

/// Every `k`-th checkpoint of the collection held out, counted across tasks in order (none for `k` <= 1;
/// never a task's only checkpoint): per task, the indices trained on, and the held-out (task, index)
/// pairs. Counted within each task, a collection of 2 checkpoints per task would hold out none; counted
/// across, it holds out one checkpoint of every few tasks, and where every task has a multiple of `k`
/// checkpoints the two counts pick the same ones (every `k`-th of each task).
#[allow(clippy::type_complexity)]
fn split_held_out(tasks: &[TrainingTask], k: usize) -> (Vec<Vec<usize>>, Vec<(usize, usize)>) {
    let mut seen = 0;
    let mut train = Vec::with_capacity(tasks.len());
    let mut held = Vec::new();
    for (ti, t) in tasks.iter().enumerate() {
        let mut kept = Vec::new();
        for i in 0..t.checkpoints.len() {
            seen += 1;
            if k > 1 && seen % k == 0 && t.checkpoints.len() > 1 {
                held.push((ti, i));
            } else {
                kept.push(i);
            }
        }
        train.push(kept);
    }
    (train, held)
}

/// At most this many adapters enter the basis head's principal directions: each is a few million values
/// and all of them are held at once (320 of SmolLM2's take 3.9 GB).
const MAX_BASIS_ROWS: usize = 320;

/// The adapters whose principal directions start the basis head, made one at a time: every training
/// checkpoint, or, when there are more than [`MAX_BASIS_ROWS`], each task's mean training checkpoint
/// (evenly strided down to that many tasks): with many tasks the directions that matter are those
/// between tasks.
fn basis_rows<'a>(
    tasks: &'a [TrainingTask],
    train: &'a [Vec<usize>],
) -> (usize, Box<dyn Iterator<Item = Result<Tensor>> + 'a>) {
    let total: usize = train.iter().map(Vec::len).sum();
    if total <= MAX_BASIS_ROWS {
        let rows = train
            .iter()
            .enumerate()
            .flat_map(move |(t, idx)| idx.iter().map(move |&i| tasks[t].checkpoint(i)));
        return (total, Box::new(rows));
    }
    let stride = tasks.len().div_ceil(MAX_BASIS_ROWS);
    let rows = (0..tasks.len())
        .step_by(stride)
        .map(move |t| mean_of(train[t].iter().map(|&i| tasks[t].checkpoint(i))));
    (tasks.len().div_ceil(stride), Box::new(rows))
}

/// The decoder's tensors the optimizer updates: all of them, or, with `freeze_basis`, all but the basis
/// head's directions, which are then frozen in the decoder too (no gradient computed for them).
fn trainable(decoder: &mut HyperConvDecoder, config: &GeneratorTrainConfig) -> Vec<Var> {
    if config.freeze_basis {
        decoder.freeze_basis();
    }
    let frozen = decoder
        .head()
        .filter(|_| config.freeze_basis)
        .map(|h| h.basis.as_tensor().id());
    decoder
        .vars()
        .into_iter()
        .filter(|v| Some(v.as_tensor().id()) != frozen)
        .collect()
}

/// Start a basis head at the top principal directions of the training checkpoints around their mean
/// `mean`, each scaled to the std of the checkpoints' coordinate along it (so coefficients of order
/// one reach them), and its bias at `mean` when the decoder predicts whole tokens (`!residual`).
/// Directions beyond the checkpoints' rank stay zero. Training then starts in the subspace the
/// checkpoints span instead of building it from zero at the learning rate's pace.
fn init_basis(
    head: &BasisHead,
    (n, rows): (usize, impl Iterator<Item = Result<Tensor>>),
    mean: &Tensor,
    residual: bool,
) -> Result<()> {
    // Filled row by row: a list of the rows and their stacked copy would hold them twice.
    let x = Tensor::zeros((n, mean.elem_count()), DType::F32, mean.device())?;
    for (i, row) in rows.enumerate() {
        x.slice_set(&(row? - mean)?.flatten_all()?.unsqueeze(0)?, 0, i)?;
    }
    let gram = x.matmul(&x.t()?)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let k = head.basis.dim(0)?;
    let pairs = gram_eigen(&gram, k);
    let v: Vec<f32> = pairs
        .iter()
        .flat_map(|(_, v)| v.iter().map(|&x| x as f32))
        .collect();
    // Xᵀ v / sqrt(n): the unit direction Xᵀ v / sqrt(λ) times the coordinate's std sqrt(λ / n).
    let dirs =
        (Tensor::from_vec(v, (pairs.len(), n), x.device())?.matmul(&x)? / (n as f64).sqrt())?;
    // `validate` checked that checkpoints have the decoder's output shape, so `dirs` fits the basis.
    head.basis
        .set(&dirs.pad_with_zeros(0, 0, k - pairs.len())?)?;
    if !residual {
        head.bias.set(&mean.flatten_all()?)?;
    }
    Ok(())
}

fn adamw(c: &GeneratorTrainConfig) -> AdamWConfig {
    AdamWConfig {
        weight_decay: c.weight_decay,
        ..AdamWConfig::default()
    }
}

fn validate(setup: &Setup, tasks: &[TrainingTask], c: &GeneratorTrainConfig) -> Result<()> {
    let bad = |m: String| Err(TrainError::Config(m));
    if tasks.is_empty() {
        return bad("no training tasks".into());
    }
    if c.steps == 0 || c.batch == 0 || c.validate_every == 0 || c.save_every == 0 {
        return bad("steps, batch, validate_every and save_every must be positive".into());
    }
    if c.objective.needs_llm() {
        match &setup.sft {
            None => {
                return bad(format!(
                    "the {:?} objective needs the base model and labelled sequences",
                    c.objective
                ))
            }
            Some(s) if s.num_tasks() != tasks.len() => {
                return bad(format!(
                    "labelled sequences for {} tasks, {} training tasks",
                    s.num_tasks(),
                    tasks.len()
                ))
            }
            Some(_) => {}
        }
        if c.mix > 0.0 || c.sft_batch == 0 {
            return bad(
                "the SFT objective takes no mixed pairs and at least one sequence per pair".into(),
            );
        }
    }
    if !(0.0..=1.0).contains(&c.mix) {
        return bad(format!(
            "mix must be a share between 0 and 1, not {}",
            c.mix
        ));
    }
    let [_, _, ch] = setup.decoder.input();
    let out = setup.decoder.output();
    for t in tasks {
        if t.checkpoints.is_empty() || t.prompts.is_empty() {
            return bad(format!("task {} needs checkpoints and prompts", t.name));
        }
        if let Some(c) = t.checkpoints.iter().find(|c| c.dims() != out) {
            return bad(format!(
                "task {}: checkpoint tokens {:?}, the decoder emits {out:?}",
                t.name,
                c.dims()
            ));
        }
        if let Some(p) = t
            .prompts
            .iter()
            .find(|p| p.rank() != 2 || p.dims()[1] != ch)
        {
            return bad(format!(
                "task {}: prompt states {:?}, the decoder takes [len, {ch}]",
                t.name,
                p.dims()
            ));
        }
    }
    Ok(())
}

/// `x + std * N(0, 1)` with the noise drawn from `rng` (Box-Muller), so runs are reproducible.
fn add_noise(x: &Tensor, std: f64, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    if std == 0.0 {
        return Ok(x.clone());
    }
    let n = x.elem_count();
    let mut z = Vec::with_capacity(n + 1);
    while z.len() < n {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let a = std::f64::consts::TAU * u2;
        z.push((r * a.cos()) as f32);
        z.push((r * a.sin()) as f32);
    }
    z.truncate(n);
    let noise = Tensor::from_vec(z, x.dims(), x.device())?.to_dtype(x.dtype())?;
    Ok((x + noise)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(n: usize, base: f32) -> TrainingTask {
        let checkpoints = (0..n)
            .map(|i| Tensor::new(&[[[base + i as f32, 1.0]]], &Device::Cpu).unwrap())
            .collect();
        TrainingTask::new(format!("t{base}"), checkpoints, Vec::new()).unwrap()
    }

    #[test]
    fn every_kth_checkpoint_of_the_collection_is_held_out() {
        let held = |sizes: &[usize], k| {
            let tasks: Vec<TrainingTask> = sizes.iter().map(|&n| task(n, 0.0)).collect();
            split_held_out(&tasks, k)
        };
        // 20 per task: every 5th of each, as counted within tasks.
        let (train, out) = held(&[20, 20], 5);
        let per_task: Vec<(usize, usize)> = (0..2)
            .flat_map(|t| [4, 9, 14, 19].map(|i| (t, i)))
            .collect();
        assert_eq!(out, per_task);
        assert_eq!(train[1].len(), 16);
        // 2 per task: the 5th, 10th, ... of the collection, one checkpoint of every few tasks.
        let (train, out) = held(&[2; 6], 5);
        assert_eq!(out, [(2, 0), (4, 1)]);
        assert_eq!(train[2], [1]);
        assert_eq!(train[3], [0, 1]);
        // A single checkpoint is never held out; k <= 1 holds out none.
        assert_eq!(held(&[1, 1, 1], 3).1, []);
        assert!(held(&[4, 4], 1).1.is_empty());
    }

    #[test]
    fn the_basis_starts_from_every_checkpoint_or_from_the_task_means() {
        let few = vec![task(3, 0.0), task(2, 10.0)];
        let all: Vec<Vec<usize>> = vec![vec![0, 1, 2], vec![0, 1]];
        let rows = |t, i| {
            let (n, rows) = basis_rows(t, i);
            let rows = rows.collect::<Result<Vec<_>>>().unwrap();
            assert_eq!(rows.len(), n);
            rows
        };
        assert_eq!(rows(&few, &all).len(), 5);

        let many = vec![task(150, 0.0), task(150, 100.0), task(150, 200.0)];
        let train: Vec<Vec<usize>> = vec![(0..150).collect(); 3];
        let means = rows(&many, &train);
        assert_eq!(means.len(), 3, "450 checkpoints: one mean per task");
        let first: Vec<f32> = means[1].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(first, vec![174.5, 1.0]);
    }
}
