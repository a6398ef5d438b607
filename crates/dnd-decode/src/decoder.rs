//! The full decoder (a cascade of [`HyperConvLayer`]s) and its files: `decoder.safetensors` with the
//! weights and `decoder.json` with the shape and what it generates for (base config hash, rank, alpha,
//! targets, chunk width), so a generator is never applied to an adapter layout it was not trained for.

use crate::config::{DecoderConfig, Head};
use crate::head::BasisHead;
use crate::layer::{HyperConvLayer, Init};
use crate::{DecodeError, Result};
use candle_core::{DType, Device, Tensor, Var};
use dnd_llm::{LoraConfig, ModelConfig};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

pub const WEIGHTS_FILE: &str = "decoder.safetensors";
pub const CONFIG_FILE: &str = "decoder.json";

/// What a generator's output means: the adapter layout its tokens decode into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorMeta {
    /// sha256 of the base model's config ([`config_hash`]).
    pub base_config_hash: String,
    pub rank: usize,
    pub alpha: f64,
    /// PEFT module names in canonical order.
    pub targets: Vec<String>,
    pub chunk_width: usize,
}

impl GeneratorMeta {
    pub fn new(model: &ModelConfig, lora: &LoraConfig, chunk_width: usize) -> Self {
        Self {
            base_config_hash: config_hash(model),
            rank: lora.rank,
            alpha: lora.alpha,
            targets: lora
                .targets
                .iter()
                .map(|t| t.module().to_string())
                .collect(),
            chunk_width,
        }
    }
}

/// sha256 of the base model's Hugging Face config as dnd writes it: equal for the same architecture
/// and sizes whether the model came from GGUF or a HF directory.
pub fn config_hash(model: &ModelConfig) -> String {
    hex::encode(Sha256::digest(model.to_hf_json().to_string().as_bytes()))
}

#[derive(Serialize, Deserialize)]
struct Files {
    decoder: DecoderConfig,
    generator: GeneratorMeta,
}

/// The hyper-convolutional decoder: `[B, N, L, C]` -> `[B, N_w, r+2, cw+2]`.
#[derive(Debug, Clone)]
pub struct HyperConvDecoder {
    config: DecoderConfig,
    layers: Vec<HyperConvLayer>,
    /// The last stage when the config's head is [`Head::Basis`].
    head: Option<BasisHead>,
}

impl HyperConvDecoder {
    /// Freshly initialised weights, reproducible from `seed`.
    pub fn new(config: DecoderConfig, dtype: DType, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Self::build(config, |_, shape, init| {
            let t = match init {
                Init::Ones => Tensor::ones(shape, dtype, &Device::Cpu)?,
                Init::Zeros => Tensor::zeros(shape, dtype, &Device::Cpu)?,
                Init::Uniform(bound) => {
                    let n = shape.iter().product();
                    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-bound..=bound)).collect();
                    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?
                }
            };
            Ok(Var::from_tensor(&t)?)
        })
    }

    /// A decoder whose tensors come from `make(name, shape, init)`, called layer by layer in a fixed
    /// order (`name` as in [`named_vars`](Self::named_vars)).
    fn build(
        config: DecoderConfig,
        mut make: impl FnMut(&str, &[usize], Init) -> Result<Var>,
    ) -> Result<Self> {
        let layers = config
            .conv_layers()
            .enumerate()
            .map(|(i, p)| {
                HyperConvLayer::build(p[0], p[1], config.kernel, |role, shape, init| {
                    make(&format!("layers.{i}.{role}"), shape, init)
                })
            })
            .collect::<Result<_>>()?;
        let head = match config.head {
            Head::Conv => None,
            Head::Basis { k } => {
                let (a, b) = (config.last_input(), config.output());
                Some(BasisHead::build(a, b, k, |role, shape, init| {
                    make(&format!("head.{role}"), shape, init)
                })?)
            }
        };
        Ok(Self {
            config,
            layers,
            head,
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    pub fn layers(&self) -> &[HyperConvLayer] {
        &self.layers
    }

    /// The basis head, when the config has one.
    pub fn head(&self) -> Option<&BasisHead> {
        self.head.as_ref()
    }

    /// Keep the basis head's directions fixed: the forward pass treats them as constants, so
    /// backpropagation computes no gradient for them (`K x` an adapter's size per update).
    pub fn freeze_basis(&mut self) {
        if let Some(h) = &mut self.head {
            h.frozen = true;
        }
    }

    /// Every trainable tensor under a stable name (`layers.I.ROLE`, `head.ROLE`).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let layers = self.layers.iter().enumerate().flat_map(|(i, l)| {
            l.named_vars()
                .into_iter()
                .map(move |(n, v)| (format!("layers.{i}.{n}"), v.clone()))
        });
        let head = self.head.iter().flat_map(|h| {
            h.named_vars()
                .into_iter()
                .map(|(n, v)| (format!("head.{n}"), v.clone()))
        });
        layers.chain(head).collect()
    }

    pub fn vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// Parameters actually held (equals [`DecoderConfig::num_parameters`]).
    pub fn num_parameters(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// Map a batch of conditions `[B, N, L, C]` (the first stage) to tokens `[B, N_w, r+2, cw+2]`.
    pub fn forward(&self, condition: &Tensor) -> Result<Tensor> {
        let [n, h, w] = self.config.input();
        match condition.dims() {
            [_, a, b, c] if [*a, *b, *c] == [n, h, w] => {}
            dims => {
                return Err(DecodeError::Shape(format!(
                    "condition is {dims:?}, the decoder expects [B, {n}, {h}, {w}]"
                )))
            }
        }
        let mut x = condition.clone();
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        match &self.head {
            Some(head) => head.forward(&x),
            None => Ok(x),
        }
    }

    /// Write `decoder.safetensors` and `decoder.json` into `dir` (each via a temporary file + rename).
    pub fn save(&self, dir: &Path, meta: &GeneratorMeta) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(crate::io_err(dir))?;
        let tensors: HashMap<String, Tensor> = self
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        dnd_io::write_atomic_with(&dir.join(WEIGHTS_FILE), |tmp| {
            Ok::<_, DecodeError>(candle_core::safetensors::save(&tensors, tmp)?)
        })?;
        let files = Files {
            decoder: self.config.clone(),
            generator: meta.clone(),
        };
        dnd_io::write_json(&dir.join(CONFIG_FILE), &files)
    }

    /// The decoder config and generator metadata stored in `dir`.
    pub fn read_meta(dir: &Path) -> Result<(DecoderConfig, GeneratorMeta)> {
        let path = dir.join(CONFIG_FILE);
        let files: Files = dnd_io::read_json::<_, DecodeError>(&path)?;
        Ok((files.decoder, files.generator))
    }

    /// Load a generator saved by [`save`](Self::save), refusing one made for another adapter layout.
    pub fn load(dir: &Path, expected: &GeneratorMeta, dtype: DType) -> Result<Self> {
        let (config, meta) = Self::read_meta(dir)?;
        let mut diffs = Vec::new();
        if meta.base_config_hash != expected.base_config_hash {
            diffs.push("base model config (hash) differs".to_string());
        }
        for (what, got, want) in [
            ("rank", meta.rank, expected.rank),
            ("chunk width", meta.chunk_width, expected.chunk_width),
        ] {
            if got != want {
                diffs.push(format!("{what} {got}, wanted {want}"));
            }
        }
        if meta.alpha != expected.alpha {
            diffs.push(format!("alpha {}, wanted {}", meta.alpha, expected.alpha));
        }
        if meta.targets != expected.targets {
            diffs.push(format!(
                "targets {:?}, wanted {:?}",
                meta.targets, expected.targets
            ));
        }
        if !diffs.is_empty() {
            return Err(DecodeError::Incompatible {
                path: dir.into(),
                reason: diffs.join("; "),
            });
        }
        config.validate()?;
        let path = dir.join(WEIGHTS_FILE);
        let bad = |reason: String| DecodeError::File {
            path: path.clone(),
            reason,
        };
        let mut tensors =
            dnd_llm::hf::read_safetensors(&path, dtype).map_err(|e| bad(e.to_string()))?;
        Self::build(config, |name, shape, _| {
            let t = tensors
                .remove(name)
                .ok_or_else(|| bad(format!("tensor `{name}` missing")))?;
            if t.dims() != shape {
                return Err(bad(format!(
                    "tensor `{name}` is {:?}, expected {shape:?}",
                    t.dims()
                )));
            }
            Ok(Var::from_tensor(&t)?)
        })
    }
}
