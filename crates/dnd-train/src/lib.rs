//! Training the Drag-and-Drop parameter generator (docs/method.md steps 2 and 6).
//!
//! A sample pairs one checkpoint of a task with N prompts drawn afresh from that task's pool; the
//! hyper-convolutional decoder maps the prompts' encoder states to LoRA tokens and is trained with a
//! per-token weighted MSE (weights: how much each token moves across a task's checkpoints), noise on
//! condition and target, AdamW with warm-up + cosine and gradient clipping. Held-out checkpoints give a
//! validation loss next to the loss of predicting the mean checkpoint.
//!
//! The output directory is a usable generator at every save (see `dnd-generate`), plus:
//!
//! ```text
//! <out>/train.json                 settings, tasks, loss per step, validations, baselines
//! <out>/loss.png                   those curves
//! <out>/loss_weights.safetensors   the per-token loss weights
//! <out>/state/LATEST, step-NNNNNN/ what a rerun resumes from (decoder, optimizer, progress)
//! ```
//!
//! Prompt encoding is the caller's (the CLI uses `dnd-encode`'s cache): tasks arrive as encoder states,
//! which keeps the loop testable without the encoder's weights.

mod data;
mod eigen;
mod plot;
mod prepare;
mod probe;
mod sft;
mod trainer;

pub use data::{load_checkpoints, token_weights, weighted_mse, TrainingTask};
pub use eigen::gram_eigen;
pub use plot::loss_png;
pub use prepare::{prepare_training, TrainingInputs};
pub use probe::{condition_probe, ConditionProbe};
pub use sft::Sft;
pub use trainer::{
    GeneratorTrainConfig, GeneratorTrainer, Objective, Preset, Setup, StepLog, TaskSummary,
    TrainManifest, ValLog, DEFAULT_BASIS_K, TRAIN_LOSS_PNG, TRAIN_MANIFEST_FILE, WEIGHTS_FILE,
};

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training setup: {0}")]
    Config(String),
    #[error("training data: {0}")]
    Data(String),
    #[error("{path}: unreadable training state: {reason}")]
    State { path: PathBuf, reason: String },
    #[error(transparent)]
    Plot(#[from] dnd_plot::PlotError),
    #[error(transparent)]
    Io(#[from] dnd_io::PathIoError),
    #[error(transparent)]
    Collect(#[from] dnd_collect::CollectError),
    #[error(transparent)]
    Llm(#[from] dnd_llm::LlmError),
    #[error(transparent)]
    Tokenize(#[from] dnd_tokenize::TokenizeError),
    #[error(transparent)]
    Decode(#[from] dnd_decode::DecodeError),
    #[error(transparent)]
    Generate(#[from] dnd_generate::GenerateError),
    #[error(transparent)]
    Optim(#[from] dnd_optim::OptimError),
    #[error(transparent)]
    Encode(#[from] dnd_encode::EncodeError),
    #[error(transparent)]
    Tasks(#[from] dnd_tasks::Error),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    dnd_io::io_err(path)
}

/// A JSON file of a generator directory that does not parse is an unreadable training state.
impl From<dnd_io::JsonError> for TrainError {
    fn from(e: dnd_io::JsonError) -> Self {
        TrainError::State {
            path: e.path,
            reason: e.reason,
        }
    }
}
