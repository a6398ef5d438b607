//! Frozen projection weights. Kept behind one type so the matmul used for base weights can be specialised
//! (e.g. to skip the weight gradient in training) without touching the model code.

use candle_core::{Result, Tensor};

/// A frozen weight `[out, in]` applied as `x W^T`.
#[derive(Clone)]
pub struct Frozen {
    w: Tensor,
}

impl Frozen {
    pub fn new(w: Tensor) -> Result<Self> {
        Ok(Self { w: w.detach() })
    }

    pub fn weight(&self) -> &Tensor {
        &self.w
    }

    /// `x [N, in] -> [N, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.w.t()?)
    }
}
