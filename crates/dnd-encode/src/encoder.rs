//! Prompts -> per-token last hidden states of the frozen sentence encoder (docs/method.md step 3).
//!
//! Length policy: a prompt longer than `max_len` word pieces (including [CLS]/[SEP]) is truncated to
//! `max_len - 1` pieces plus the final [SEP], exactly as sentence-transformers does, and counted in
//! [`Encoded::truncated`] with a warning; with `strict` it is an error instead. The default limit is 256,
//! all-MiniLM-L6-v2's `max_seq_length` (the model was trained on at most 256 pieces although its position
//! table has 512 rows); `max_len` may go up to the position table.

use crate::bert::{Bert, BertConfig};
use crate::error::{EncodeError, Result};
use candle_core::{Device, Tensor};
use std::path::Path;

/// How prompts are cut and padded.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    /// Longest sequence in word pieces, [CLS] and [SEP] included (the paper's L).
    pub max_len: usize,
    /// Pad every batch to `max_len` (a fixed condition shape) instead of to its longest prompt.
    pub pad_to_max: bool,
    /// Reject over-long prompts instead of truncating them.
    pub strict: bool,
    /// Prompts per encoder forward pass (bounds memory; results do not depend on it beyond rounding).
    pub batch_size: usize,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            max_len: 256,
            pad_to_max: false,
            strict: false,
            batch_size: 32,
        }
    }
}

/// A padded batch of encoded prompts. Padded positions hold zeros, so a prompt's condition does not
/// depend on which other prompts share its batch.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// `[N, T, hidden]` last hidden states, T = longest prompt or `max_len`.
    pub hidden: Tensor,
    /// `[N, T]` f32, 1 on real tokens and 0 on padding.
    pub mask: Tensor,
    /// How many prompts were truncated to `max_len`.
    pub truncated: usize,
}

/// One prompt's hidden states before padding.
#[derive(Debug, Clone)]
pub struct PromptStates {
    /// `[len, hidden]`, len <= max_len.
    pub hidden: Tensor,
    /// Word pieces before truncation ([CLS]/[SEP] included).
    pub tokens: usize,
}

/// The frozen encoder: BERT weights, WordPiece tokenizer and the length policy.
pub struct Encoder {
    bert: Bert,
    tokenizer: tokenizers::Tokenizer,
    sep: u32,
    config: EncoderConfig,
    /// sha256 of `model.safetensors`: identifies the weights in cache keys.
    model_hash: String,
}

impl Encoder {
    /// all-MiniLM-L6-v2 from the asset cache (fetched and verified on first use).
    pub fn minilm(config: EncoderConfig) -> Result<Self> {
        let asset = dnd_assets::asset("minilm")?;
        let dir = dnd_assets::Cache::new().ensure(asset)?;
        Self::from_dir(&dir, asset.sha256.to_string(), config)
    }

    /// A BERT directory (`config.json`, `model.safetensors`, `tokenizer.json`); hashes the weights.
    pub fn load(dir: &Path, config: EncoderConfig) -> Result<Self> {
        let hash = dnd_assets::sha256_file(&dir.join("model.safetensors"))?;
        Self::from_dir(dir, hash, config)
    }

    fn from_dir(dir: &Path, model_hash: String, config: EncoderConfig) -> Result<Self> {
        let bert_cfg = BertConfig::from_file(&dir.join("config.json"))?;
        if config.max_len < 2 || config.max_len > bert_cfg.max_position_embeddings {
            return Err(EncodeError::Config(format!(
                "max_len {} must be in 2..={} (the position table)",
                config.max_len, bert_cfg.max_position_embeddings
            )));
        }
        if config.batch_size == 0 {
            return Err(EncodeError::Config("batch_size must be positive".into()));
        }
        let bert = Bert::load(bert_cfg, &dir.join("model.safetensors"))?;
        let tok_path = dir.join("tokenizer.json");
        let tok_err = |reason: String| EncodeError::Tokenizer {
            path: tok_path.clone(),
            reason,
        };
        let mut tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| tok_err(e.to_string()))?;
        // The shipped file truncates at 128 and pads to a fixed 128; we apply our own policy.
        tokenizer
            .with_truncation(None)
            .map_err(|e| tok_err(e.to_string()))?;
        tokenizer.with_padding(None);
        let sep = tokenizer
            .token_to_id("[SEP]")
            .ok_or_else(|| tok_err("no [SEP] token".into()))?;
        Ok(Self {
            bert,
            tokenizer,
            sep,
            config,
            model_hash,
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    pub fn hidden_size(&self) -> usize {
        self.bert.config.hidden_size
    }

    pub fn model_hash(&self) -> &str {
        &self.model_hash
    }

    /// Word-piece ids with [CLS]/[SEP], cut to `max_len`, and each prompt's length before cutting.
    /// Errors on an empty list, a blank prompt, or (strict) an over-long prompt.
    pub fn tokenize<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Vec<(Vec<u32>, usize)>> {
        if prompts.is_empty() {
            return Err(EncodeError::NoPrompts);
        }
        if let Some(index) = prompts.iter().position(|p| p.as_ref().trim().is_empty()) {
            return Err(EncodeError::BlankPrompt { index });
        }
        let texts: Vec<&str> = prompts.iter().map(AsRef::as_ref).collect();
        let encodings =
            self.tokenizer
                .encode_batch(texts, true)
                .map_err(|e| EncodeError::Tokenizer {
                    path: "tokenizer.json".into(),
                    reason: e.to_string(),
                })?;
        let max = self.config.max_len;
        encodings
            .into_iter()
            .enumerate()
            .map(|(index, e)| {
                let mut ids = e.get_ids().to_vec();
                let tokens = ids.len();
                if tokens > max {
                    self.check_length(index, tokens)?;
                    ids.truncate(max - 1);
                    ids.push(self.sep);
                }
                Ok((ids, tokens))
            })
            .collect()
    }

    /// Under `strict`, an error for a prompt of `tokens` pieces that exceeds `max_len`.
    pub(crate) fn check_length(&self, index: usize, tokens: usize) -> Result<()> {
        if self.config.strict && tokens > self.config.max_len {
            return Err(EncodeError::PromptTooLong {
                index,
                tokens,
                max_len: self.config.max_len,
                limit: self.bert.config.max_position_embeddings,
            });
        }
        Ok(())
    }

    /// Each prompt's unpadded hidden states, run in batches of similar length to limit padding.
    pub fn encode_each<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Vec<PromptStates>> {
        let tokenized = self.tokenize(prompts)?;
        let mut order: Vec<usize> = (0..tokenized.len()).collect();
        order.sort_by_key(|&i| tokenized[i].0.len());
        let mut out: Vec<Option<PromptStates>> = vec![None; tokenized.len()];
        for chunk in order.chunks(self.config.batch_size) {
            let t = chunk
                .iter()
                .map(|&i| tokenized[i].0.len())
                .max()
                .unwrap_or(0);
            let mut ids = Vec::with_capacity(chunk.len() * t);
            let mut mask = Vec::with_capacity(chunk.len() * t);
            for &i in chunk {
                let seq = &tokenized[i].0;
                ids.extend(
                    seq.iter()
                        .copied()
                        .chain(std::iter::repeat_n(0, t - seq.len())),
                );
                mask.extend((0..t).map(|j| if j < seq.len() { 1f32 } else { 0f32 }));
            }
            let ids = Tensor::from_vec(ids, (chunk.len(), t), &Device::Cpu)?;
            let mask = Tensor::from_vec(mask, (chunk.len(), t), &Device::Cpu)?;
            let hidden = self.bert.forward(&ids, &mask)?;
            for (row, &i) in chunk.iter().enumerate() {
                let len = tokenized[i].0.len();
                out[i] = Some(PromptStates {
                    hidden: hidden.get(row)?.narrow(0, 0, len)?.contiguous()?,
                    tokens: tokenized[i].1,
                });
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// A padded batch `[N, T, hidden]` with its mask.
    pub fn encode<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Encoded> {
        let states = self.encode_each(prompts)?;
        self.assemble(&states)
    }

    /// Pad per-prompt states into one batch, zero beyond each prompt, and count/report truncations.
    pub fn assemble(&self, states: &[PromptStates]) -> Result<Encoded> {
        if states.is_empty() {
            return Err(EncodeError::NoPrompts);
        }
        let h = self.hidden_size();
        let lens: Vec<usize> = states
            .iter()
            .map(|s| s.hidden.dim(0))
            .collect::<candle_core::Result<_>>()?;
        let t = if self.config.pad_to_max {
            self.config.max_len
        } else {
            lens.iter().copied().max().unwrap_or(0)
        };
        let mut rows = Vec::with_capacity(states.len());
        let mut mask = Vec::with_capacity(states.len() * t);
        for (s, &len) in states.iter().zip(&lens) {
            rows.push(s.hidden.pad_with_zeros(0, 0, t - len)?);
            mask.extend((0..t).map(|j| if j < len { 1f32 } else { 0f32 }));
        }
        let truncated = states
            .iter()
            .filter(|s| s.tokens > self.config.max_len)
            .count();
        if truncated > 0 {
            tracing::warn!(
                "{truncated} of {} prompts truncated to {} word pieces",
                states.len(),
                self.config.max_len
            );
        }
        Ok(Encoded {
            hidden: Tensor::stack(&rows, 0)?.reshape((states.len(), t, h))?,
            mask: Tensor::from_vec(mask, (states.len(), t), &Device::Cpu)?,
            truncated,
        })
    }
}
