//! `dnd experiment`: the leave-one-out protocol of docs/method.md on one checkpoint collection, with every
//! baseline the paper left out, and its report.
//!
//! For each held-out target: train a generator on the other tasks' checkpoints and prompts, generate
//! adapters from batches of the target's unlabeled `prompts` split, and score them on its `test` split
//! next to the base model, every training LoRA (their mean and the best), the uniform average of all
//! training checkpoints, the training LoRA with the nearest prompts, and the oracle (the target's own
//! LoRA). Everything lands in a work directory outside the repository and is reused by a rerun:
//!
//! ```text
//! <work>/generators/<target>/           a dnd-train generator directory (resumes by itself)
//! <work>/adapters/<target>/dnd-<i>/      generated PEFT adapters (+ generation.json: its timing)
//! <work>/adapters/<target>/uniform-avg/  the element-wise mean of the training checkpoints' A and B
//! <work>/scores/runs/<label>/<task>.json a dnd-evaluate store: one file per scored (adapter, task)
//! <work>/task_embeddings.json           mean pooled prompt embedding per task (for "nearest")
//! ```
//!
//! The report (Markdown, JSON and figures) goes to a results directory ([`report`]).

mod baselines;
mod experiment;
pub mod pca;
pub mod pipeline;
mod plot;
pub mod position;
pub mod report;

pub use baselines::{cosine, mean_pooled, uniform_average};
pub use experiment::{run, Context, Event, ExperimentConfig, Paths};
pub use pipeline::{
    check_encoder, generate_adapter, model_config, prepare_training, read_index, save_adapter,
    task_prompts, PromptEncoder, TrainingInputs,
};
pub use report::{compare, Comparison, DndDiff, Paired, Report, Score};

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("experiment setup: {0}")]
    Config(String),
    #[error("{path}: {reason}")]
    Json { path: PathBuf, reason: String },
    #[error("{path}: cannot draw: {reason}")]
    Plot { path: PathBuf, reason: String },
    #[error(transparent)]
    Io(#[from] dnd_assets::PathIoError),
    #[error(transparent)]
    Llm(#[from] dnd_llm::LlmError),
    #[error(transparent)]
    Tasks(#[from] dnd_tasks::Error),
    #[error(transparent)]
    Eval(#[from] dnd_evaluate::EvalError),
    #[error(transparent)]
    Collect(#[from] dnd_collect::CollectError),
    #[error(transparent)]
    Encode(#[from] dnd_encode::EncodeError),
    #[error(transparent)]
    Tokenize(#[from] dnd_tokenize::TokenizeError),
    #[error(transparent)]
    Train(#[from] dnd_train::TrainError),
    #[error(transparent)]
    Generate(#[from] dnd_generate::GenerateError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ExperimentError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExperimentError + '_ {
    dnd_assets::io_err(path)
}

/// Write `text` through a temporary file and a rename, so a killed run leaves no half-written file.
pub(crate) fn write_atomic(path: &Path, text: &str) -> Result<()> {
    dnd_evaluate::report::write_atomic(path, text).map_err(Into::into)
}
