//! Errors of the prompt encoder. Each names the file or prompt it is about.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Io(#[from] dnd_io::PathIoError),
    #[error("{path}: unusable encoder model: {reason}")]
    Model { path: PathBuf, reason: String },
    #[error("{path}: cannot load the tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("no prompts to encode (is the prompt file empty?)")]
    NoPrompts,
    #[error("prompt {index} is empty or only whitespace")]
    BlankPrompt { index: usize },
    #[error(
        "prompt {index} has {tokens} tokens but the encoder limit is {max_len} \
         (strict mode; allow truncation or raise max_len up to {limit})"
    )]
    PromptTooLong {
        index: usize,
        tokens: usize,
        max_len: usize,
        limit: usize,
    },
    #[error("invalid encoder setting: {0}")]
    Config(String),
    #[error("{path}: corrupt cached embedding: {reason}")]
    Cache { path: PathBuf, reason: String },
    #[error(transparent)]
    Asset(#[from] dnd_assets::AssetError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, EncodeError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EncodeError + '_ {
    dnd_io::io_err(path)
}
