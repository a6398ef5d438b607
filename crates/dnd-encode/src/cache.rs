//! A disk cache of per-prompt hidden states, so training (which redraws N prompts from each pool at every
//! step) runs the encoder once per distinct prompt over its whole life.
//!
//! One safetensors file per prompt, `DIR/ab/abcd....safetensors`, keyed by
//! sha256(model hash, max_len, text): per-prompt files let pools that share prompts share entries and let
//! an interrupted run keep what it had computed. Files are written to a temporary name and renamed, so a
//! reader never sees a half-written entry.

use crate::encoder::{Encoded, Encoder, PromptStates};
use crate::error::{io_err, EncodeError, Result};
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// An [`Encoder`] behind a disk cache.
pub struct CachedEncoder {
    encoder: Encoder,
    dir: PathBuf,
    /// Prompts that went through the model (cache misses), for callers and tests to observe.
    computed: AtomicUsize,
}

impl CachedEncoder {
    /// Cache under `dir` (created on first write).
    pub fn new(encoder: Encoder, dir: PathBuf) -> Self {
        Self {
            encoder,
            dir,
            computed: AtomicUsize::new(0),
        }
    }

    /// The default location, `$DND_CACHE/embeddings`.
    pub fn default_dir() -> PathBuf {
        dnd_assets::cache_root().join("embeddings")
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// How many prompts have been run through the encoder so far (cache misses).
    pub fn computed(&self) -> usize {
        self.computed.load(Ordering::Relaxed)
    }

    /// The cache file of one prompt.
    pub fn path_of(&self, text: &str) -> PathBuf {
        let mut h = Sha256::new();
        h.update(self.encoder.model_hash().as_bytes());
        h.update([0]);
        h.update(self.encoder.config().max_len.to_le_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        let key = hex::encode(h.finalize());
        self.dir.join(&key[..2]).join(format!("{key}.safetensors"))
    }

    /// Per-prompt states, from the cache where present; misses are encoded together and stored.
    pub fn encode_each<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Vec<PromptStates>> {
        if prompts.is_empty() {
            return Err(EncodeError::NoPrompts);
        }
        let mut found: Vec<Option<PromptStates>> = Vec::with_capacity(prompts.len());
        for p in prompts {
            let path = self.path_of(p.as_ref());
            found.push(if path.is_file() {
                Some(read_entry(&path, self.encoder.hidden_size())?)
            } else {
                None
            });
        }
        // Distinct missing texts, each encoded once even if drawn twice.
        let mut missing: Vec<&str> = Vec::new();
        let mut slot: HashMap<&str, usize> = HashMap::new();
        for (p, f) in prompts.iter().zip(&found) {
            if f.is_none() && !slot.contains_key(p.as_ref()) {
                slot.insert(p.as_ref(), missing.len());
                missing.push(p.as_ref());
            }
        }
        let fresh = if missing.is_empty() {
            Vec::new()
        } else {
            let fresh = self.encoder.encode_each(&missing).map_err(|e| match e {
                // Report the caller's index, not the position among the misses.
                EncodeError::PromptTooLong {
                    index,
                    tokens,
                    max_len,
                    limit,
                } => EncodeError::PromptTooLong {
                    index: prompts
                        .iter()
                        .position(|p| p.as_ref() == missing[index])
                        .unwrap_or(index),
                    tokens,
                    max_len,
                    limit,
                },
                e => e,
            })?;
            self.computed.fetch_add(missing.len(), Ordering::Relaxed);
            for (text, s) in missing.iter().zip(&fresh) {
                write_entry(&self.path_of(text), s)?;
            }
            fresh
        };
        let mut out = Vec::with_capacity(prompts.len());
        for (index, (p, f)) in prompts.iter().zip(found).enumerate() {
            let s = match f {
                Some(s) => s,
                None => fresh[slot[p.as_ref()]].clone(),
            };
            self.encoder.check_length(index, s.tokens)?;
            out.push(s);
        }
        Ok(out)
    }

    /// A padded batch, as [`Encoder::encode`], served from the cache where possible.
    pub fn encode<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Encoded> {
        let states = self.encode_each(prompts)?;
        self.encoder.assemble(&states)
    }
}

fn read_entry(path: &Path, hidden: usize) -> Result<PromptStates> {
    let bad = |reason: String| EncodeError::Cache {
        path: path.into(),
        reason,
    };
    let mut t =
        candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| bad(e.to_string()))?;
    let states = t
        .remove("hidden")
        .filter(|h| h.dtype() == DType::F32 && h.rank() == 2 && h.dim(1).ok() == Some(hidden))
        .ok_or_else(|| bad(format!("no f32 `hidden` [len, {hidden}] tensor")))?;
    let tokens = t
        .remove("tokens")
        .and_then(|x| x.to_vec1::<u32>().ok())
        .and_then(|v| v.first().copied())
        .ok_or_else(|| bad("no u32 `tokens` count".into()))?;
    Ok(PromptStates {
        hidden: states,
        tokens: tokens as usize,
    })
}

fn write_entry(path: &Path, s: &PromptStates) -> Result<()> {
    let dir = path.parent().expect("cache paths have a parent");
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tokens = Tensor::new(&[s.tokens as u32], &Device::Cpu)?;
    let tensors = HashMap::from([
        ("hidden".to_string(), s.hidden.clone()),
        ("tokens".into(), tokens),
    ]);
    // Processes sharing the cache may write one entry at once: each through its own temporary file.
    dnd_io::write_atomic_with(path, |tmp| {
        Ok::<_, EncodeError>(candle_core::safetensors::save(&tensors, tmp)?)
    })
}
