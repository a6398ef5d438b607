//! The stage boundary "prompts -> per-prompt hidden states" that training and generation are written
//! against, so they run on MiniLM, on MiniLM behind the disk cache, or on a cheap synthetic encoder in
//! tests that have no encoder weights.

use crate::cache::CachedEncoder;
use crate::encoder::{Encoder, PromptStates};
use crate::error::Result;
use candle_core::Tensor;

/// Turns prompts into per-prompt hidden states `[len, C]`.
pub trait PromptEncoder {
    /// One `[len, C]` tensor per prompt, in order.
    fn encode(&self, prompts: &[&str]) -> Result<Vec<Tensor>>;
    /// C, the width of a state.
    fn hidden_size(&self) -> usize;
    /// Identifies the encoder's weights: a generator refuses conditions from another encoder.
    fn model_hash(&self) -> String;
    /// Word pieces per prompt the states are cut to.
    fn max_len(&self) -> usize;
}

/// The per-prompt hidden states of an `encode_each` result.
fn hidden_states(states: Vec<PromptStates>) -> Vec<Tensor> {
    states.into_iter().map(|s| s.hidden).collect()
}

impl PromptEncoder for Encoder {
    fn encode(&self, prompts: &[&str]) -> Result<Vec<Tensor>> {
        Ok(hidden_states(self.encode_each(prompts)?))
    }
    fn hidden_size(&self) -> usize {
        Encoder::hidden_size(self)
    }
    fn model_hash(&self) -> String {
        Encoder::model_hash(self).to_string()
    }
    fn max_len(&self) -> usize {
        self.config().max_len
    }
}

/// The cached encoder is its encoder: same states (from the cache when present), same description.
impl PromptEncoder for CachedEncoder {
    fn encode(&self, prompts: &[&str]) -> Result<Vec<Tensor>> {
        Ok(hidden_states(self.encode_each(prompts)?))
    }
    fn hidden_size(&self) -> usize {
        PromptEncoder::hidden_size(self.encoder())
    }
    fn model_hash(&self) -> String {
        PromptEncoder::model_hash(self.encoder())
    }
    fn max_len(&self) -> usize {
        PromptEncoder::max_len(self.encoder())
    }
}

/// A borrowed encoder encodes alike, so a pipeline can hold `&dyn PromptEncoder`.
impl<T: PromptEncoder + ?Sized> PromptEncoder for &T {
    fn encode(&self, prompts: &[&str]) -> Result<Vec<Tensor>> {
        (**self).encode(prompts)
    }
    fn hidden_size(&self) -> usize {
        (**self).hidden_size()
    }
    fn model_hash(&self) -> String {
        (**self).model_hash()
    }
    fn max_len(&self) -> usize {
        (**self).max_len()
    }
}
