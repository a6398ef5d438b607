//! LoRA tokenization for Drag-and-Drop LLMs (docs/method.md step 4): an adapter becomes `N_w` equal-shaped 2-D
//! tokens `[r+2, cw+2]` (standardised chunks of A and B^T with their mean/std written into a 2-wide
//! border), which the hyper-convolutional decoder learns to produce; decoding inverts it to float rounding.
//! Shapes come from the base model's config, rank and targets only.

mod layout;
mod tokenizer;

pub use layout::{default_chunk_width, Factor, TokenInfo, MODULE_ORDER};
pub use tokenizer::LoraTokenizer;

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("invalid tokenizer setting: {0}")]
    Config(String),
    #[error("adapter or tokens do not fit this tokenizer: {0}")]
    Mismatch(String),
    #[error(transparent)]
    Llm(#[from] dnd_llm::LlmError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, TokenizeError>;
