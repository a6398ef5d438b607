//! The base LLM that every dnd stage builds on: Llama and Qwen2 decoders loaded from GGUF or Hugging Face
//! directories into f32, LoRA on every projection, PEFT adapter I/O, log-likelihood scoring and greedy
//! generation.

pub mod adapter_config;
mod attention;
pub mod blas;
pub mod config;
pub mod error;
pub mod gguf;
pub mod hf;
mod linear;
pub mod lora;
pub mod model;
mod ops;
pub mod peft;
mod qmatmul;
pub mod score;
#[cfg(test)]
mod test_util;
pub mod tokenizer;
pub mod train;

pub use config::{Arch, ModelConfig, Target};
pub use error::{LlmError, Result};
pub use lora::{Lora, LoraConfig};
pub use model::{KvCache, Transformer};
pub use tokenizer::{ChatMessage, Tokenizer};

use candle_core::DType;
use std::path::{Path, PathBuf};

/// A loaded base model with its tokenizer.
pub struct Llm {
    pub model: Transformer,
    pub tokenizer: Tokenizer,
    /// Where it was loaded from (recorded in adapters as `base_model_name_or_path`).
    pub source: PathBuf,
}

impl Llm {
    /// Load a GGUF file or a Hugging Face directory (config.json, *.safetensors, tokenizer.json).
    pub fn load(path: &Path, dtype: DType) -> Result<Self> {
        if path.is_dir() {
            let cfg = ModelConfig::from_hf_file(&path.join("config.json"))?;
            let weights = hf::read_weights(path, dtype)?;
            let model = Transformer::new(cfg, weights, dtype, path)?;
            let tokenizer = Tokenizer::from_file(&path.join("tokenizer.json"))?;
            return Ok(Self {
                model,
                tokenizer,
                source: path.into(),
            });
        }
        let mut file = gguf::GgufFile::open(path)?;
        let cfg = file.config()?;
        let tokenizer = Tokenizer::from_gguf(&file.content, path)?;
        let weights = file.weights(&cfg)?;
        let model = Transformer::new(cfg, weights, dtype, path)?;
        Ok(Self {
            model,
            tokenizer,
            source: path.into(),
        })
    }

    /// Keep the GGUF's quantised blocks next to the f32 weights for inference, prompts and decoding
    /// ([`Transformer::set_quantized`]): `dnd generate-text --quantized`, `dnd serve --quantized`. A
    /// Hugging Face directory has no blocks and is left as it is. Returns how many weights got them.
    pub fn quantize_for_inference(&mut self) -> Result<usize> {
        let Some((model, n)) = self.quantized_model()? else {
            return Ok(0);
        };
        self.model = model;
        Ok(n)
    }

    /// A copy of the model with the quantised blocks attached (and how many), leaving this one
    /// as it is; `None` for a Hugging Face directory.
    pub fn quantized_model(&self) -> Result<Option<(Transformer, usize)>> {
        if self.source.is_dir() {
            return Ok(None);
        }
        let mut file = gguf::GgufFile::open(&self.source)?;
        let q = file.quantized_weights(self.model.config())?;
        let mut model = self.model.clone();
        let n = model.set_quantized(q)?;
        Ok(Some((model, n)))
    }
}
