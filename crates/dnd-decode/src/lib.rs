//! The hyper-convolutional parameter generator of Drag-and-Drop LLMs (docs/method.md step 5): a cascade of
//! layers mapping the prompt condition `[B, N, L, C]` to LoRA tokens `[B, N_w, r+2, cw+2]`.
//!
//! The CPU default ([`DecoderConfig::cpu_default`]) keeps the paper's layer and shrinks the rest: kernel
//! 3, three layers, a condition of 32 prompts of 32 word pieces, and [`CPU_DEFAULT_HIDDEN`] maps before the
//! last layer (`DecoderConfig::cpu` for other sizes). The last layer's N-mixing conv costs
//! `H' W' N_w N k^2` multiply-adds, so N stays small until it. Candidate shapes were timed with `cargo run
//! --release -p dnd-decode --example bench` (results/bench/README.md, "Choosing the CPU decoder shape").
//! The last stage is made by the paper's layer ([`Head::Conv`]) or by the basis head
//! ([`Head::Basis`], [`BasisHead`]): the paper's cannot hold per-token differences between tasks, and
//! a generator with it does not fit its own training tasks (results/generator/README.md).

mod config;
mod decoder;
mod head;
mod im2col;
mod layer;

pub use config::{DecoderConfig, Head, Stage, CPU_DEFAULT_HIDDEN, CPU_DEFAULT_INPUT};
pub use decoder::{config_hash, GeneratorMeta, HyperConvDecoder, CONFIG_FILE, WEIGHTS_FILE};
pub use head::BasisHead;
pub use layer::{conv_same, HyperConvLayer};

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid decoder config: {0}")]
    Config(String),
    #[error("wrong input shape: {0}")]
    Shape(String),
    #[error(transparent)]
    Io(#[from] dnd_io::PathIoError),
    #[error("{path}: unreadable generator file: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: this generator was trained for another adapter layout: {reason}")]
    Incompatible { path: PathBuf, reason: String },
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, DecodeError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DecodeError + '_ {
    dnd_io::io_err(path)
}

/// A generator file that is not the JSON it should be is an unreadable generator file.
impl From<dnd_io::JsonError> for DecodeError {
    fn from(e: dnd_io::JsonError) -> Self {
        DecodeError::File {
            path: e.path,
            reason: e.reason,
        }
    }
}
