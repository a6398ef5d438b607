//! LoRA adapters: `W x + s * B (A x)` on any of the seven projections of every layer, with A `[r, in]`
//! and B `[out, r]` as PEFT stores them.

use crate::config::{ModelConfig, Target};
use crate::error::{LlmError, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use std::path::Path;

/// Rank, scaling and placement of an adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// Targets in canonical order ([`Target::ALL`] order), no duplicates.
    pub targets: Vec<Target>,
    /// rsLoRA scaling `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
}

impl LoraConfig {
    /// A config with targets put in canonical order.
    pub fn new(rank: usize, alpha: f64, targets: &[Target]) -> Self {
        let mut targets = targets.to_vec();
        targets.sort();
        targets.dedup();
        Self {
            rank,
            alpha,
            targets,
            use_rslora: false,
        }
    }

    /// The paper's default: rank 8, alpha 16 on all seven projections.
    pub fn paper_default() -> Self {
        Self::new(8, 16.0, &Target::ALL)
    }

    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

/// The A/B matrices of one adapter for one base-model shape.
#[derive(Clone)]
pub struct Lora {
    config: LoraConfig,
    /// `modules[layer][target.index()]` = (A, B) where the target is adapted.
    modules: Vec<Vec<Option<(Tensor, Tensor)>>>,
}

impl Lora {
    /// Assemble an adapter from `(layer, target, A, B)` entries, checking that every configured module is
    /// present exactly once with the shapes the base config implies. `source` labels errors.
    pub fn from_parts(
        config: LoraConfig,
        model: &ModelConfig,
        parts: Vec<(usize, Target, Tensor, Tensor)>,
        source: &Path,
    ) -> Result<Self> {
        let bad = |reason: String| LlmError::AdapterMismatch {
            path: source.into(),
            reason,
        };
        if config.rank == 0 || config.targets.is_empty() {
            return Err(bad("rank and target list must be non-empty".into()));
        }
        let mut modules = vec![vec![None; 7]; model.num_layers];
        for (layer, target, a, b) in parts {
            if layer >= model.num_layers {
                return Err(bad(format!(
                    "layer {layer} but the base model has {} layers",
                    model.num_layers
                )));
            }
            if !config.targets.contains(&target) {
                return Err(bad(format!(
                    "{} is not among the configured targets",
                    target.module()
                )));
            }
            let (i, o) = model.module_shape(target);
            let r = config.rank;
            if a.dims() != [r, i] || b.dims() != [o, r] {
                return Err(bad(format!(
                    "layer {layer} {}: A {:?} / B {:?}, expected A [{r}, {i}] / B [{o}, {r}]",
                    target.module(),
                    a.dims(),
                    b.dims()
                )));
            }
            let slot = &mut modules[layer][target.index()];
            if slot.is_some() {
                return Err(bad(format!(
                    "layer {layer} {} appears twice",
                    target.module()
                )));
            }
            *slot = Some((a, b));
        }
        for (layer, row) in modules.iter().enumerate() {
            for &t in &config.targets {
                if row[t.index()].is_none() {
                    return Err(bad(format!("layer {layer} {} is missing", t.module())));
                }
            }
        }
        Ok(Self { config, modules })
    }

    /// PEFT's initialisation from a seed: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform with a = sqrt 5),
    /// B = 0. The same seed gives the same bytes on every run, so all tasks share one starting point.
    pub fn init(config: LoraConfig, model: &ModelConfig, seed: u64, dtype: DType) -> Result<Self> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut parts = Vec::new();
        for layer in 0..model.num_layers {
            for &t in &config.targets {
                let (i, o) = model.module_shape(t);
                let bound = 1.0 / (i as f64).sqrt();
                let a: Vec<f64> = (0..config.rank * i)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a = Tensor::from_vec(a, (config.rank, i), &Device::Cpu)?.to_dtype(dtype)?;
                let b = Tensor::zeros((o, config.rank), dtype, &Device::Cpu)?;
                parts.push((layer, t, a, b));
            }
        }
        Self::from_parts(config, model, parts, Path::new("<init>"))
    }

    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    pub fn num_layers(&self) -> usize {
        self.modules.len()
    }

    /// `(A, B, scale)` of one module, if adapted.
    pub fn get(&self, layer: usize, target: Target) -> Option<(&Tensor, &Tensor, f64)> {
        self.modules
            .get(layer)?
            .get(target.index())?
            .as_ref()
            .map(|(a, b)| (a, b, self.config.scale()))
    }

    /// Every adapted module in canonical order: layer, then target.
    pub fn modules(&self) -> impl Iterator<Item = (usize, Target, &Tensor, &Tensor)> {
        self.modules.iter().enumerate().flat_map(|(l, row)| {
            Target::ALL
                .into_iter()
                .filter_map(move |t| row[t.index()].as_ref().map(|(a, b)| (l, t, a, b)))
        })
    }

    /// A trainable copy: the same values held in [`Var`]s (A then B per module, canonical order).
    pub fn to_vars(&self) -> Result<(Self, Vec<Var>)> {
        let mut vars = Vec::new();
        let mut out = self.clone();
        for row in out.modules.iter_mut() {
            for (a, b) in row.iter_mut().flatten() {
                let va = Var::from_tensor(a)?;
                let vb = Var::from_tensor(b)?;
                *a = va.as_tensor().clone();
                *b = vb.as_tensor().clone();
                vars.push(va);
                vars.push(vb);
            }
        }
        Ok((out, vars))
    }

    /// The same adapter with every tensor converted to `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let mut out = self.clone();
        for (a, b) in out.modules.iter_mut().flat_map(|r| r.iter_mut().flatten()) {
            *a = a.to_dtype(dtype)?;
            *b = b.to_dtype(dtype)?;
        }
        Ok(out)
    }
}
