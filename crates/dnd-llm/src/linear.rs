//! Frozen projection weights, applied through a custom op whose backward pass returns only the input
//! gradient. candle's matmul backward also computes `x^T dy` for the weight, a full-size matmul per
//! projection that LoRA training throws away (STACK.md measured ~20% of the step and ~2 GB).

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

/// A frozen weight `[out, in]` applied as `x W^T`.
#[derive(Clone)]
pub struct Frozen {
    w: Tensor,
}

/// `x [m, k] -> x W^T [m, n]` for a frozen `W [n, k]`.
struct FrozenMatmul {
    w: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = x_layout.shape().dims2()?;
        let (storage, w_layout) = self.w.storage_and_layout();
        let Storage::Cpu(w) = &*storage else {
            bail!("frozen-matmul: weight is not on the CPU")
        };
        let (n, wk) = w_layout.shape().dims2()?;
        if wk != k {
            bail!("frozen-matmul: input has {k} features, weight expects {wk}")
        }
        let out = x.matmul(w, (1, m, n, k), x_layout, &w_layout.transpose(0, 1)?)?;
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(dy.matmul(&self.w)?))
    }
}

impl Frozen {
    pub fn new(w: Tensor) -> Result<Self> {
        Ok(Self {
            w: w.detach().contiguous()?,
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.w
    }

    /// `x [N, in] -> [N, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !x.device().is_cpu() {
            return x.matmul(&self.w.t()?);
        }
        x.apply_op1(FrozenMatmul { w: self.w.clone() })
    }
}
