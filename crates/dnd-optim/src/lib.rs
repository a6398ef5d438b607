//! The optimiser shared by every trainer in dnd (LoRA fine-tuning, the parameter generator).
//!
//! candle-nn's `AdamW` keeps its moments private, so a killed run cannot be resumed exactly; this one
//! exposes its whole state (step, first and second moments) as named tensors that round-trip through
//! safetensors bit for bit. Around it: the warm-up + cosine learning-rate schedule, global-norm gradient
//! clipping and gradient accumulation over micro-batches, all with PyTorch's semantics.

mod fused;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use fused::{prepared, Ema, Update};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("optimizer state: {0}")]
    State(String),
}

pub type Result<T> = std::result::Result<T, OptimError>;

/// AdamW hyper-parameters (PyTorch's defaults except the learning rate, which the schedule supplies).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay: each step multiplies the parameters by `1 - lr * weight_decay`.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// AdamW over a fixed list of variables, as `torch.optim.AdamW` (non-amsgrad, non-fused) computes it.
pub struct AdamW {
    config: AdamWConfig,
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
}

impl AdamW {
    /// Zero moments, step 0.
    pub fn new(vars: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        let m = vars.iter().map(zeros).collect::<candle_core::Result<_>>()?;
        let v = vars.iter().map(zeros).collect::<candle_core::Result<_>>()?;
        Ok(Self {
            config,
            vars,
            m,
            v,
            step: 0,
        })
    }

    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// Number of updates applied so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One update with learning rate `lr`; `grads[i]` belongs to `vars[i]`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.vars.len() {
            return Err(OptimError::State(format!(
                "{} gradients for {} variables",
                grads.len(),
                self.vars.len()
            )));
        }
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt();
        let step_size = lr / bc1;
        let first = Ema {
            a: c.beta1,
            b: 1.0 - c.beta1,
            square: false,
        };
        let second = Ema {
            a: c.beta2,
            b: 1.0 - c.beta2,
            square: true,
        };
        let update = Update {
            decay: 1.0 - lr * c.weight_decay,
            step_size,
            inv_bc2_sqrt: 1.0 / bc2_sqrt,
            eps: c.eps,
        };
        for (i, g) in grads.iter().enumerate() {
            let g = prepared(g, &self.m[i])?;
            self.m[i].inplace_op2(&g, &first)?;
            self.v[i].inplace_op2(&g, &second)?;
            self.vars[i]
                .as_tensor()
                .inplace_op3(&self.m[i], &self.v[i], &update)?;
        }
        Ok(())
    }

    /// The whole state as named tensors: `step` (i64 `[1]`), `m.{i}` and `v.{i}` per variable.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(
            "step".to_string(),
            Tensor::new(&[self.step as i64], &Device::Cpu)?,
        )];
        // Copies: the moments are updated in place by the next step.
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            out.push((format!("m.{i}"), m.copy()?));
            out.push((format!("v.{i}"), v.copy()?));
        }
        Ok(out)
    }

    /// Restore a state written by [`Self::state`], checking that it fits these variables.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let get = |k: &str| {
            state
                .get(k)
                .ok_or_else(|| OptimError::State(format!("`{k}` missing")))
        };
        let step = get("step")?.to_dtype(DType::I64)?.to_vec1::<i64>()?;
        let &[step] = step.as_slice() else {
            return Err(OptimError::State("`step` must hold one value".into()));
        };
        let count = state.keys().filter(|k| k.starts_with("m.")).count();
        if count != self.vars.len() {
            return Err(OptimError::State(format!(
                "{count} moments saved for {} variables",
                self.vars.len()
            )));
        }
        for i in 0..self.vars.len() {
            let shape = self.vars[i].dims();
            for (key, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let t = get(&format!("{key}.{i}"))?;
                if t.dims() != shape {
                    return Err(OptimError::State(format!(
                        "{key}.{i} has shape {:?}, the variable {shape:?}",
                        t.dims()
                    )));
                }
                // A copy of its own: the moments are updated in place.
                *slot = t.to_dtype(slot.dtype())?.copy()?;
            }
        }
        self.step = step as u64;
        Ok(())
    }

    /// Write the state to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let state: HashMap<_, _> = self.state()?.into_iter().collect();
        Ok(candle_core::safetensors::save(&state, path)?)
    }

    /// Read a state written by [`Self::save`].
    pub fn load(&mut self, path: &Path) -> Result<()> {
        self.load_state(&candle_core::safetensors::load(path, &Device::Cpu)?)
    }
}

/// Linear warm-up from 0 to `peak` over `warmup` steps, then a half cosine down to `floor` at `total`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub peak: f64,
    pub warmup: usize,
    pub total: usize,
    pub floor: f64,
}

impl Schedule {
    /// Learning rate of the 1-based update `step`: `peak * step / warmup` up to `warmup`, then a half
    /// cosine that reaches `floor` at `total` and stays there. Unlike transformers' scheduler the first
    /// update already gets a non-zero rate, so no step is wasted.
    pub fn lr(&self, step: usize) -> f64 {
        if step <= self.warmup {
            return self.peak * step as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.floor + (self.peak - self.floor) * cos
    }
}

/// Scale `grads` in place so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` does (factor `max_norm / (norm + 1e-6)`, never above 1).
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter() {
        sq += g
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(norm)
}

/// Sums the gradients of the variables over micro-batches. Scale each micro-batch's loss by its share
/// of the full batch (e.g. its number of target tokens over the batch's) and the sum equals the
/// gradient of the full batch's loss.
pub struct GradAccumulator {
    sums: Vec<Option<Tensor>>,
}

impl GradAccumulator {
    pub fn new(num_vars: usize) -> Self {
        Self {
            sums: vec![None; num_vars],
        }
    }

    /// Add one backward pass's gradients of `vars`; a variable the loss does not reach adds nothing.
    pub fn add(&mut self, vars: &[Var], grads: &GradStore) -> Result<()> {
        for (slot, var) in self.sums.iter_mut().zip(vars) {
            if let Some(g) = grads.get(var.as_tensor()) {
                *slot = Some(match slot.take() {
                    Some(s) => (s + g)?,
                    None => g.clone(),
                });
            }
        }
        Ok(())
    }

    /// The summed gradients (zeros for variables never reached), resetting the accumulator.
    pub fn take(&mut self, vars: &[Var]) -> Result<Vec<Tensor>> {
        self.sums
            .iter_mut()
            .zip(vars)
            .map(|(slot, v)| match slot.take() {
                Some(g) => Ok(g),
                None => Ok(v.as_tensor().zeros_like()?),
            })
            .collect()
    }
}
