//! Errors of the export stage, each naming the file it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Llm(#[from] dnd_llm::LlmError),
    #[error(transparent)]
    Io(#[from] dnd_io::PathIoError),
    #[error("{path}: {reason}")]
    Base { path: PathBuf, reason: String },
    #[error("the adapter cannot be expressed in a llama.cpp LoRA file: {0}")]
    Inexpressible(String),
    #[error("writing {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ExportError>;
