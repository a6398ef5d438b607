use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Io(#[from] dnd_io::PathIoError),
    #[error(transparent)]
    Json(#[from] dnd_io::JsonError),
    #[error(transparent)]
    Llm(#[from] dnd_llm::LlmError),
    #[error(transparent)]
    Task(#[from] dnd_tasks::Error),
    #[error(transparent)]
    Optim(#[from] dnd_optim::OptimError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("invalid training setup: {0}")]
    Config(String),
    #[error("task `{task}`: {reason}")]
    Data { task: String, reason: String },
    #[error(
        "{dir} holds a run with other settings ({reason}); choose another directory or start over \
         (the CLI's --fresh)"
    )]
    Mismatch { dir: PathBuf, reason: String },
    #[error("{path}: not a usable run state: {reason}")]
    State { path: PathBuf, reason: String },
    #[error(transparent)]
    Plot(#[from] dnd_plot::PlotError),
}

pub type Result<T> = std::result::Result<T, CollectError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CollectError + '_ {
    dnd_io::io_err(path)
}
