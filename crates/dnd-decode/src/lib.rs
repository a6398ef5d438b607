//! The hyper-convolutional parameter generator of Drag-and-Drop LLMs (METHOD.md step 5): a cascade of
//! layers mapping the prompt condition `[B, N, L, C]` to LoRA tokens `[B, N_w, r+2, cw+2]`.
//!
//! The CPU default ([`DecoderConfig::cpu_default`]) was chosen with `cargo run --release -p dnd-decode
//! --example bench` on the project's 2-core machine while other jobs ran (load average 8-10, a 1024^3
//! matmul at 48-79 GFLOP/s), for SmolLM2-135M rank 8 (output 1590 x 10 x 194), kernel 3:
//!
//! | input (N, L, C) | layers | params | GMAC | forward (s) | forward+backward (s) |
//! |---|---|---|---|---|---|
//! | 32, 32, 384 (then the default) | 3 | 5.35 M | 5.8 | 0.28-0.83 | 3.8-4.2 |
//! | 32, 64, 384 | 3 | 5.42 M | 8.4 | 1.4-1.9 | 8.1 |
//! | 64, 32, 384 | 3 | 5.38 M | 8.5 | 0.9-1.8 | 5.8 |
//! | 32, 64, 384, N up to 128 | 4 | 7.94 M | 14.9 | 1.0-4.0 | 8.4 |
//!
//! End to end with the default (encode 32 prompts, decoder forward, de-tokenize) took 1.1-1.6 s under
//! that load, about half of it in the encoder. (The paper's common-sense decoder costs 4,129 GMAC per
//! sample.) The last layer's N-mixing conv costs `H' W' N_w N` multiply-adds, so N stays at 64 until it.
//!
//! Those timings predate the single-op im2col (`im2col.rs`): against the official PyTorch decoder of the
//! same cascade in the same `dnd bench generate` run, the forward went from 2.60x PyTorch's time to
//! 0.35-0.64x, and a training step from 1.43x to 0.48-0.70x (three runs at load 4.6-6.2; see
//! results/bench/README.md).
//!
//! The table's default had 64 maps before the last layer. The default is now 128
//! ([`CPU_DEFAULT_HIDDEN`]; `DecoderConfig::cpu` for others), 6.32 M parameters. Capacity, not input
//! size, limits how well the generator fits real checkpoints (results/generator/README.md).

mod config;
mod decoder;
mod im2col;
mod layer;

pub use config::{DecoderConfig, Stage, CPU_DEFAULT_HIDDEN, CPU_DEFAULT_INPUT};
pub use decoder::{config_hash, GeneratorMeta, HyperConvDecoder, CONFIG_FILE, WEIGHTS_FILE};
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
