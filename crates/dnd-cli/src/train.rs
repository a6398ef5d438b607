//! `dnd train`: the parameter generator, trained on a checkpoint collection with prompts drawn afresh
//! from each task's `prompts` split at every step; resumable from its output directory.

use crate::common::{check_task_files, ModelArg};
use crate::finetune::step_bar;
use anyhow::{bail, Context, Result};
use dnd_collect::default_collection_dir;
use dnd_collect::CollectionIndex;
use dnd_decode::{Head, CPU_DEFAULT_INPUT};
use dnd_encode::{CachedEncoder, Encoder, EncoderConfig};
use dnd_train::{
    prepare_training, GeneratorTrainConfig, GeneratorTrainer, Objective, Preset, TrainingInputs,
    DEFAULT_BASIS_K,
};
use std::path::PathBuf;

/// The generator-training flags `dnd train` and `dnd experiment` share: the collection, the base
/// model, the prompt batches and the optimisation schedule.
#[derive(clap::Args)]
pub struct GeneratorArgs {
    /// Collection name: $DND_CACHE/collections/<name>.
    #[arg(long, default_value = "commonsense")]
    pub collection: String,
    /// Collection directory, instead of the one --collection implies.
    #[arg(long)]
    pub collection_dir: Option<PathBuf>,
    /// Base model (path or asset name); default: the one recorded in the collection.
    #[arg(long)]
    pub model: Option<String>,
    /// N: prompts per condition.
    #[arg(long, default_value_t = CPU_DEFAULT_INPUT[0])]
    pub prompts: usize,
    /// L: word pieces per prompt (also the encoder's limit).
    #[arg(long, default_value_t = CPU_DEFAULT_INPUT[1])]
    pub prompt_len: usize,
    /// Maps before the decoder's last layer: every output token is mixed from these.
    #[arg(long, default_value_t = dnd_decode::CPU_DEFAULT_HIDDEN)]
    pub decoder_hidden: usize,
    /// Where every setting below that is not given comes from: `dnd`, this project's defaults, or
    /// `paper`, the method as published, scaled to the CPU only where it must be (docs/method.md).
    #[arg(long, value_enum, default_value_t = PresetArg::Dnd)]
    pub preset: PresetArg,
    /// The decoder's last layer: `basis` (K learned whole-adapter directions, mixed by coefficients
    /// read from the prompts; dnd) or `conv` (the paper's hyper-convolutional layer).
    #[arg(long, value_enum)]
    pub head: Option<HeadKind>,
    /// K, the directions of the basis head.
    #[arg(long, default_value_t = DEFAULT_BASIS_K)]
    pub basis_k: usize,
    /// Generator updates (per target in `dnd experiment`; the final generator is used). Default:
    /// the preset's (dnd 600, paper 1000).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = GeneratorTrainConfig::default().batch)]
    pub batch: usize,
    /// Peak learning rate. Default: the preset's (dnd 3e-4, paper 3e-5).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = GeneratorTrainConfig::default().validate_every)]
    pub validate_every: usize,
    #[arg(long, default_value_t = GeneratorTrainConfig::default().save_every)]
    pub save_every: usize,
    /// Share of training pairs that mix two tasks' prompts and interpolate their checkpoints.
    #[arg(long, default_value_t = GeneratorTrainConfig::default().mix)]
    pub mix: f64,
    /// Weight every token of the loss alike (default: by how much it moves within a task).
    #[arg(long)]
    pub uniform_weights: bool,
    /// Standardise the prompt states channel by channel with the training prompts' statistics
    /// (`true`/`false`; default: the preset's, dnd true, paper false).
    #[arg(long)]
    pub standardize: Option<bool>,
    /// What the decoder minimises: `reconstruction` (MSE to the checkpoints, the paper's), `sft` (the
    /// base LLM's answer-token loss with the generated adapter on the task's labelled examples), or
    /// `hybrid` (both, the SFT part weighted by --sft-weight).
    #[arg(long, value_enum, default_value_t = ObjectiveArg::Reconstruction)]
    pub objective: ObjectiveArg,
    #[arg(long, default_value_t = GeneratorTrainConfig::default().sft_weight)]
    pub sft_weight: f64,
    /// Labelled sequences per prompt/checkpoint pair for the SFT loss.
    #[arg(long, default_value_t = GeneratorTrainConfig::default().sft_batch)]
    pub sft_batch: usize,
    /// Keep the basis head's directions at the training checkpoints' principal directions and learn
    /// only how the prompts mix them (no optimizer state for them): for collections of hundreds of
    /// tasks, with a --basis-k near the number of tasks.
    #[arg(long)]
    pub freeze_basis: bool,
    /// Data root.
    #[arg(long, env = "DND_DATA", default_value = dnd_tasks::DEFAULT_DATA_DIR)]
    pub data: PathBuf,
}

/// `--head`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum HeadKind {
    Conv,
    Basis,
}

/// `--objective`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ObjectiveArg {
    Reconstruction,
    Sft,
    Hybrid,
}

/// `--preset`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PresetArg {
    Dnd,
    Paper,
}

impl GeneratorArgs {
    fn preset(&self) -> Preset {
        match self.preset {
            PresetArg::Dnd => Preset::Dnd,
            PresetArg::Paper => Preset::Paper,
        }
    }

    /// The decoder head: --head and --basis-k, else the preset's.
    pub fn head(&self) -> Head {
        let basis = Head::Basis { k: self.basis_k };
        match (self.head, self.preset().head()) {
            (Some(HeadKind::Conv), _) => Head::Conv,
            (Some(HeadKind::Basis), _) | (None, Head::Basis { .. }) => basis,
            (None, preset) => preset,
        }
    }

    /// --collection-dir, or the directory --collection names.
    pub fn collection_dir(&self) -> PathBuf {
        self.collection_dir
            .clone()
            .unwrap_or_else(|| default_collection_dir(&self.collection))
    }

    /// --model, or the base model the collection `index` records.
    pub fn model(&self, index: &CollectionIndex) -> ModelArg {
        ModelArg {
            model: self.model.clone().unwrap_or(index.base_model.path.clone()),
        }
    }

    /// The prompt encoder, truncating at --prompt-len word pieces.
    pub fn encoder(&self) -> Result<Encoder> {
        Ok(Encoder::minilm(EncoderConfig {
            max_len: self.prompt_len,
            ..EncoderConfig::default()
        })?)
    }

    /// The preset's settings with these flags' changes.
    pub fn train_config(&self) -> GeneratorTrainConfig {
        let p = self.preset().train_config();
        GeneratorTrainConfig {
            steps: self.steps.unwrap_or(p.steps),
            batch: self.batch,
            lr: self.lr.unwrap_or(p.lr),
            validate_every: self.validate_every,
            save_every: self.save_every,
            mix: self.mix,
            uniform_weights: self.uniform_weights || p.uniform_weights,
            standardize: self.standardize.unwrap_or(p.standardize),
            objective: match self.objective {
                ObjectiveArg::Reconstruction => Objective::Reconstruction,
                ObjectiveArg::Sft => Objective::Sft,
                ObjectiveArg::Hybrid => Objective::Hybrid,
            },
            sft_weight: self.sft_weight,
            sft_batch: self.sft_batch,
            freeze_basis: self.freeze_basis,
            ..p
        }
    }
}

#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    generator: GeneratorArgs,
    /// Comma-separated tasks to train on (default: every task of the collection), e.g. all but the
    /// held-out one.
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<String>,
    /// Task files the collection's tasks came from (checked: a task defined differently from the
    /// collection's record is refused); repeatable.
    #[arg(long)]
    task_file: Vec<PathBuf>,
    /// Generator directory (resumed if it holds an unfinished run with the same settings).
    #[arg(long)]
    out: PathBuf,
    /// Delete --out first instead of resuming.
    #[arg(long)]
    fresh: bool,
    #[arg(long, default_value_t = GeneratorTrainConfig::default().weight_decay)]
    weight_decay: f64,
    #[arg(long, default_value_t = GeneratorTrainConfig::default().clip)]
    clip: f64,
    /// Lowest per-token loss weight (relative to a mean of 1). Default: the preset's (dnd 0.05,
    /// paper 0).
    #[arg(long)]
    min_weight: Option<f64>,
    #[arg(long, default_value_t = GeneratorTrainConfig::default().seed)]
    seed: u64,
    /// Predict whole tokens, as the paper does, instead of offsets from the mean training checkpoint.
    #[arg(long)]
    no_residual: bool,
    /// Hold out every k-th checkpoint of the collection (counted across tasks in order; never a task's
    /// only one) for the validation loss (0: none).
    #[arg(long, default_value_t = GeneratorTrainConfig::default().holdout_every)]
    holdout_every: usize,
    /// Stop after this many updates in this invocation (time-boxing; rerun to continue).
    #[arg(long)]
    stop_after: Option<usize>,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let g = &a.generator;
    let dir = g.collection_dir();
    let index =
        CollectionIndex::read(&dir).with_context(|| format!("collection {}", dir.display()))?;
    let tasks = index.resolve(&a.tasks, &g.data)?;
    check_task_files(&a.task_file, &tasks)?;
    if tasks.is_empty() {
        bail!("{} lists no tasks", dir.display());
    }
    let model_path = g.model(&index).path()?;
    let enc = CachedEncoder::new(g.encoder()?, CachedEncoder::default_dir());
    let preset = g.train_config();
    let inputs = TrainingInputs {
        collection: &dir,
        index: &index,
        tasks: &tasks,
        model_path: &model_path,
        data: &g.data,
        prompts: g.prompts,
        prompt_len: g.prompt_len,
        out: a.out.clone(),
        decoder_hidden: g.decoder_hidden,
        head: g.head(),
        sft: preset.objective.needs_llm(),
    };
    let (setup, data) = prepare_training(&inputs, &enc)?;
    if a.fresh && a.out.exists() {
        std::fs::remove_dir_all(&a.out).with_context(|| format!("removing {}", a.out.display()))?;
    }
    let config = GeneratorTrainConfig {
        weight_decay: a.weight_decay,
        clip: a.clip,
        min_weight: a.min_weight.unwrap_or(preset.min_weight),
        seed: a.seed,
        residual: preset.residual && !a.no_residual,
        holdout_every: a.holdout_every,
        ..preset
    };
    let config_steps = config.steps;
    let mut trainer = GeneratorTrainer::open(setup, data, config)?;
    let (mean, own) = trainer.baseline_losses();
    tracing::info!(
        "{} decoder parameters; held-out loss of the mean checkpoint {mean:?}, of the own task's mean {own:?}",
        trainer.decoder().num_parameters()
    );
    if let Some(p) = trainer.condition_probe() {
        tracing::info!(
            "prompt features tell the tasks apart: {:.1}% of single held-out prompts, {:.1}% of batches of {}; centroid separation {:.2}",
            100.0 * p.prompt_accuracy,
            100.0 * p.batch_accuracy,
            p.batch,
            p.separation
        );
    }
    let bar = step_bar(config_steps, "train");
    bar.set_position(trainer.step_count() as u64);
    let mut last_val = String::new();
    let m = trainer.run(a.stop_after, &mut |s, v| {
        if let Some(v) = v {
            last_val = format!(" val {:.4}", v.loss);
            // Also in the log, for runs whose progress bar nobody sees.
            tracing::info!("step {}: held-out loss {:.4}", v.step, v.loss);
        }
        bar.set_position(s.step as u64);
        bar.set_message(format!(
            "loss {:.4}{last_val} lr {:.2e} {:.1}s/step",
            s.loss, s.lr, s.seconds
        ));
    })?;
    bar.finish();
    if !m.complete {
        // --stop-after imitates a kill in the library; here the steps since the last save are kept.
        trainer.save()?;
    }
    let val = m.validations.last().map(|v| v.loss);
    println!(
        "{} after {} of {} steps: held-out loss {val:?} vs mean checkpoint {:?} (own task's mean {:?}); {:.2} s/step; {}",
        if m.complete { "done" } else { "stopped" },
        m.step,
        m.config.steps,
        m.baseline_mean_checkpoint,
        m.baseline_task_mean,
        m.seconds_per_step,
        a.out.display()
    );
    Ok(())
}
