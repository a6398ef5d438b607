//! Drag-and-Drop generation (docs/method.md step 7): a trained generator turns a batch of N encoded prompts
//! into a LoRA adapter with one decoder forward and a de-tokenization.
//!
//! A generator directory holds the decoder (`decoder.safetensors`, `decoder.json` with the adapter
//! layout it produces, from `dnd-decode`) and `generator.json` ([`GeneratorInfo`]: the prompt encoder
//! it was trained with), so it is never fed conditions from another encoder nor applied to another
//! base model or rank. Prompt encoding itself lives in `dnd-encode`; this crate takes per-prompt hidden
//! states, so it can be tested without the encoder's weights.

mod norm;
mod pipeline;

pub use norm::{ConditionNorm, NORM_FILE};
pub use pipeline::{save_adapter, DragAndDrop};

use candle_core::{DType, Tensor};
use dnd_decode::{DecodeError, GeneratorMeta, HyperConvDecoder};
use dnd_llm::{Lora, LoraConfig, ModelConfig, Target};
use dnd_tokenize::{LoraTokenizer, TokenizeError};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const INFO_FILE: &str = "generator.json";
/// The fixed offset added to the decoder's output (see [`Generator::generate`]); absent for a generator
/// that predicts whole tokens, as the paper's does.
pub const OFFSET_FILE: &str = "offset.safetensors";
const OFFSET_KEY: &str = "offset";

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("no prompts to condition on: {0}")]
    NoPrompts(String),
    #[error("{path}: not a usable generator: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("the prompt encoder: {0}")]
    Encode(#[from] dnd_encode::EncodeError),
    #[error("{0}")]
    Encoder(String),
    #[error(transparent)]
    Io(#[from] dnd_io::PathIoError),
    #[error(transparent)]
    Llm(#[from] dnd_llm::LlmError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, GenerateError>;

/// A generator file that is not the JSON it should be makes the generator unusable.
impl From<dnd_io::JsonError> for GenerateError {
    fn from(e: dnd_io::JsonError) -> Self {
        GenerateError::File {
            path: e.path,
            reason: e.reason,
        }
    }
}

/// `generator.json`: how the conditions the decoder was trained on were made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorInfo {
    /// sha256 of the prompt encoder's weights: another encoder's states mean nothing to the decoder.
    pub encoder_model_hash: String,
    /// The encoder's word-piece limit per prompt (its cache key); the decoder's L may be shorter.
    pub encoder_max_len: usize,
    /// Recorded as `base_model_name_or_path` in generated adapters.
    pub base_model: String,
}

/// Write a generator directory: decoder files, the offset and the condition's standardisation (each
/// if any), then `generator.json`, each atomically.
pub fn save(
    dir: &Path,
    decoder: &HyperConvDecoder,
    meta: &GeneratorMeta,
    info: &GeneratorInfo,
    offset: Option<&Tensor>,
    norm: Option<&ConditionNorm>,
) -> Result<()> {
    decoder.save(dir, meta)?;
    let norm_path = dir.join(NORM_FILE);
    match norm {
        Some(n) => n.save(dir)?,
        None if norm_path.exists() => {
            std::fs::remove_file(&norm_path).map_err(dnd_io::io_err::<GenerateError>(&norm_path))?
        }
        None => {}
    }
    let path = dir.join(OFFSET_FILE);
    match offset {
        Some(o) => {
            let map = [(OFFSET_KEY.to_string(), o.clone())].into();
            dnd_io::write_atomic_with(&path, |tmp| {
                Ok::<_, GenerateError>(candle_core::safetensors::save(&map, tmp)?)
            })?;
        }
        None if path.exists() => {
            std::fs::remove_file(&path).map_err(dnd_io::io_err::<GenerateError>(&path))?
        }
        None => {}
    }
    dnd_io::write_json(&dir.join(INFO_FILE), info)
}

/// `generator.json` of the generator directory `dir`: the encoder and base model it was trained with.
pub fn read_info(dir: &Path) -> Result<GeneratorInfo> {
    dnd_io::read_json(&dir.join(INFO_FILE))
}

/// A loaded generator: decoder, the tokenizer of the adapter layout it emits, and its encoder settings.
pub struct Generator {
    decoder: HyperConvDecoder,
    tokenizer: LoraTokenizer,
    info: GeneratorInfo,
    offset: Option<Tensor>,
    norm: Option<ConditionNorm>,
    offset_scale: f64,
}

impl Generator {
    /// Load the generator in `dir` for base model `model`. Refuses a generator made for another base
    /// config, or for another rank than `rank` when one is given, and reports unreadable files.
    pub fn load(dir: &Path, model: &ModelConfig, rank: Option<usize>) -> Result<Self> {
        let (_, stored) = HyperConvDecoder::read_meta(dir)?;
        let bad = |reason: String| GenerateError::File {
            path: dir.join(dnd_decode::CONFIG_FILE),
            reason,
        };
        let targets = stored
            .targets
            .iter()
            .map(|m| Target::from_module(m).ok_or_else(|| bad(format!("unknown target `{m}`"))))
            .collect::<Result<Vec<_>>>()?;
        let lora = LoraConfig::new(rank.unwrap_or(stored.rank), stored.alpha, &targets);
        let expected = GeneratorMeta::new(model, &lora, stored.chunk_width);
        let decoder = HyperConvDecoder::load(dir, &expected, DType::F32)?;
        let tokenizer = LoraTokenizer::new(model, &lora, stored.chunk_width)?;
        let (h, w) = tokenizer.token_shape();
        let out = decoder.config().output();
        if out != [tokenizer.num_tokens(), h, w] {
            return Err(bad(format!(
                "decoder emits {out:?}, the adapter layout needs [{}, {h}, {w}]",
                tokenizer.num_tokens()
            )));
        }
        let info = read_info(dir)?;
        let offset = load_offset(dir, out)?;
        let norm = ConditionNorm::load(dir, decoder.config().input()[2])?;
        Ok(Self {
            decoder,
            tokenizer,
            info,
            offset,
            norm,
            offset_scale: 1.0,
        })
    }

    /// Multiply the decoder's output, the predicted departure from the offset (the mean training
    /// checkpoint), by `scale` before the offset is added: 1 is the trained generator, 0 the mean
    /// checkpoint, above 1 extrapolates away from it. On held-out tasks the generated adapters move
    /// only part of the way towards the nearest training task (the experiment report's weight-space
    /// positions); this asks how much of the rest a larger step recovers.
    pub fn with_offset_scale(mut self, scale: f64) -> Self {
        self.offset_scale = scale;
        self
    }

    pub fn info(&self) -> &GeneratorInfo {
        &self.info
    }

    pub fn decoder(&self) -> &HyperConvDecoder {
        &self.decoder
    }

    pub fn tokenizer(&self) -> &LoraTokenizer {
        &self.tokenizer
    }

    /// N: prompts per condition.
    pub fn prompts_per_batch(&self) -> usize {
        self.decoder.config().input()[0]
    }

    /// L: word pieces per prompt in the condition.
    pub fn prompt_len(&self) -> usize {
        self.decoder.config().input()[1]
    }

    /// One adapter from per-prompt hidden states (`[len_i, C]`, exactly N of them): standardised if
    /// the generator was trained so, the decoder's tokens (times the offset scale) plus the
    /// generator's offset, de-tokenized.
    pub fn generate(&self, states: &[&Tensor]) -> Result<Lora> {
        let cond = match &self.norm {
            Some(norm) => {
                let std = states
                    .iter()
                    .map(|s| norm.apply(s))
                    .collect::<Result<Vec<_>>>()?;
                condition(&std.iter().collect::<Vec<_>>(), self.prompt_len())?
            }
            None => condition(states, self.prompt_len())?,
        }
        .unsqueeze(0)?;
        let mut out = self.decoder.forward(&cond)?;
        if self.offset_scale != 1.0 {
            out = (out * self.offset_scale)?;
        }
        let tokens = with_offset(out, self.offset.as_ref())?.squeeze(0)?;
        Ok(self.tokenizer.decode(&tokens)?)
    }
}

/// `tokens [B, N_w, H, W]` plus `offset [N_w, H, W]` when there is one. Training and generation both
/// go through here, so a generator emits exactly what it was trained to emit.
pub fn with_offset(tokens: Tensor, offset: Option<&Tensor>) -> Result<Tensor> {
    Ok(match offset {
        Some(o) => tokens.broadcast_add(o)?,
        None => tokens,
    })
}

/// The offset in `dir`, if the generator has one; it must have the decoder's output shape.
fn load_offset(dir: &Path, shape: [usize; 3]) -> Result<Option<Tensor>> {
    let path = dir.join(OFFSET_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let bad = |reason: String| GenerateError::File {
        path: path.clone(),
        reason,
    };
    let mut map = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
        .map_err(|e| bad(e.to_string()))?;
    let t = map
        .remove(OFFSET_KEY)
        .ok_or_else(|| bad(format!("no `{OFFSET_KEY}` tensor")))?;
    if t.dims() != shape {
        return Err(bad(format!(
            "offset of shape {:?}, the decoder emits {shape:?}",
            t.dims()
        )));
    }
    Ok(Some(t.to_dtype(DType::F32)?))
}

/// The condition `[N, L, C]`: each prompt's states `[len, C]` cut or zero-padded to `len` rows (the
/// encoder already zeroes padding, so a prompt's rows do not depend on its batch).
pub fn condition(states: &[&Tensor], len: usize) -> Result<Tensor> {
    if states.is_empty() {
        return Err(GenerateError::NoPrompts("an empty batch".into()));
    }
    let rows = states
        .iter()
        .map(|s| {
            let n = s.dim(0)?.min(len);
            s.narrow(0, 0, n)?.pad_with_zeros(0, 0, len - n)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::stack(&rows, 0)?)
}

/// `n` indices into a pool of `pool` prompts: distinct when the pool is large enough; otherwise the
/// whole pool as often as it fits, then distinct extras, so every prompt is used as evenly as possible
/// (a single task description fills the batch with copies of itself).
pub fn draw(pool: usize, n: usize, rng: &mut ChaCha8Rng) -> Result<Vec<usize>> {
    if pool == 0 {
        return Err(GenerateError::NoPrompts("the prompt pool is empty".into()));
    }
    let mut out = Vec::with_capacity(n);
    while out.len() + pool <= n {
        out.extend(0..pool);
    }
    out.extend(rand::seq::index::sample(rng, pool, n - out.len()));
    out.shuffle(rng);
    Ok(out)
}

/// `k` prompt batches of `n` for generation, reproducible from `seed`.
pub fn draw_batches(pool: usize, n: usize, k: usize, seed: u64) -> Result<Vec<Vec<usize>>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..k).map(|_| draw(pool, n, &mut rng)).collect()
}
