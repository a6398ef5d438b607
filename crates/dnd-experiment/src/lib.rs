//! `dnd experiment`: the leave-one-out protocol of docs/method.md on one checkpoint collection, with every
//! baseline the paper left out, and its report.
//!
//! For each held-out target: train a generator on the checkpoints and prompts of the tasks of every
//! other source dataset (templates of the target's dataset are held out with it), generate
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
//! <work>/units/<target>.json            a job unit's completion marker ([`run_unit`])
//! ```
//!
//! The report (Markdown, JSON and figures) goes to a results directory ([`report`]).

mod baselines;
mod experiment;
mod label;
pub mod pca;
mod plot;
pub mod position;
pub mod report;

pub use baselines::{cosine, mean_pooled, uniform_average};
pub use experiment::{
    missing_units, run, run_unit, units, Context, Event, ExperimentConfig, Paths,
};
pub use label::{BadLabel, RunLabel};
pub use report::{compare, Comparison, DndDiff, Paired, Report, Score, REPORT_SCHEMA};

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("experiment setup: {0}")]
    Config(String),
    #[error(transparent)]
    Json(#[from] dnd_io::JsonError),
    #[error(transparent)]
    Plot(#[from] dnd_plot::PlotError),
    #[error(transparent)]
    Io(#[from] dnd_io::PathIoError),
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
    dnd_io::io_err(path)
}

/// Read a JSON file of the work directory.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    dnd_io::read_json(path)
}
