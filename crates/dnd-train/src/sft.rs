//! The SFT objective: train the generator through the base LLM's own loss (Text-to-LoRA's objective).
//!
//! The generated tokens are de-tokenised with tensor operations
//! ([`LoraTokenizer::decode_differentiable`]), the adapter is applied to the base model, and the
//! answer-token cross-entropy on a batch of the task's labelled adapter-train sequences is
//! backpropagated to the tokens. The gradient reaches the decoder in a second, separate backward: the
//! trainer adds `sum(tokens * d loss / d tokens)` to its objective. Splitting the two keeps the
//! LLM's graph (micro-batched with gradient accumulation, as `dnd collect` trains) out of the
//! decoder's, and gives the decoder exactly the chain rule's gradient.

use crate::{Result, TrainError};
use candle_core::{DType, Tensor, Var};
use dnd_collect::{lm_micro_batches, Sequence};
use dnd_llm::train::lm_loss;
use dnd_llm::Transformer;
use dnd_tokenize::LoraTokenizer;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The base model, the adapter layout, and each training task's labelled sequences (in the trainer's
/// task order).
pub struct Sft {
    model: Transformer,
    tokenizer: LoraTokenizer,
    sequences: Vec<Vec<Sequence>>,
    micro_batch_tokens: usize,
}

impl Sft {
    /// `sequences[t]`: task t's adapter-train sequences (none empty); `micro_batch_tokens` caps one
    /// forward's padded tokens, as in `dnd collect`.
    pub fn new(
        model: Transformer,
        tokenizer: LoraTokenizer,
        sequences: Vec<Vec<Sequence>>,
        micro_batch_tokens: usize,
    ) -> Result<Self> {
        if sequences.iter().any(Vec::is_empty) {
            return Err(TrainError::Data(
                "the SFT objective needs labelled sequences for every training task".into(),
            ));
        }
        Ok(Self {
            model,
            tokenizer,
            sequences,
            micro_batch_tokens,
        })
    }

    /// Tasks it holds sequences for.
    pub fn num_tasks(&self) -> usize {
        self.sequences.len()
    }

    /// `n` of task `task`'s sequences drawn with replacement from `rng`.
    pub fn draw(&self, task: usize, n: usize, rng: &mut ChaCha8Rng) -> Vec<&Sequence> {
        let pool = &self.sequences[task];
        (0..n)
            .map(|_| &pool[rng.random_range(0..pool.len())])
            .collect()
    }

    /// The answer-token loss (mean over the batch's answer tokens) of the adapter `tokens`
    /// `[N_w, r+2, cw+2]` describe, applied to the base model, and its gradient with respect to
    /// `tokens` (same shape and dtype).
    pub fn loss_and_grad(&self, tokens: &Tensor, batch: &[&Sequence]) -> Result<(f64, Tensor)> {
        let var = Var::from_tensor(&tokens.detach())?;
        let lora = self
            .tokenizer
            .decode_differentiable(var.as_tensor())?
            .to_dtype(self.model.dtype())?;
        let mut grad = var.as_tensor().zeros_like()?;
        let mut loss = 0f64;
        for (lm, share) in lm_micro_batches(batch, self.micro_batch_tokens)? {
            let l = (lm_loss(&self.model, Some(&lora), &lm)? * share)?;
            if let Some(g) = l.backward()?.get(var.as_tensor()) {
                grad = (grad + g.to_dtype(tokens.dtype())?)?;
            }
            loss += l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
        Ok((loss, grad))
    }
}
