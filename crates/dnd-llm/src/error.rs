//! The error type of the base-LLM layer. Every variant names the file or tensor it is about, so a user
//! handed a bad model or adapter can tell what to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error(transparent)]
    Io(#[from] dnd_io::PathIoError),
    #[error("{path}: not a readable GGUF file: {reason}")]
    Gguf { path: PathBuf, reason: String },
    #[error("{path}: not a readable safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error(transparent)]
    Json(#[from] dnd_io::JsonError),
    #[error("{path}: missing or invalid config key `{key}`: {reason}")]
    Config {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{path}: unsupported model: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: tensor `{name}`: {reason}")]
    Tensor {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{path}: adapter does not fit the base model: {reason}")]
    AdapterMismatch { path: PathBuf, reason: String },
    #[error("non-finite result: {0} (is the adapter's lora_alpha or a weight extreme?)")]
    NonFinite(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, LlmError>;

/// An I/O error on `path`, as an [`LlmError`].
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> LlmError + '_ {
    dnd_io::io_err(path)
}
