//! The frozen prompt encoder of Drag-and-Drop LLMs (docs/method.md step 3): all-MiniLM-L6-v2 turns a batch of
//! N prompts into the condition tensor `[N, L, 384]` (per-token last hidden states, no pooling) with its
//! mask, and a disk cache keyed by model + length limit + text means training never encodes a prompt twice.

mod bert;
mod cache;
mod encoder;
mod error;
mod prompt_encoder;

pub use bert::{mean_pool_normalized, Bert, BertConfig};
pub use cache::CachedEncoder;
pub use encoder::{Encoded, Encoder, EncoderConfig, PromptStates};
pub use error::{EncodeError, Result};
pub use prompt_encoder::PromptEncoder;
