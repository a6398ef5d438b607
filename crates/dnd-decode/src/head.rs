//! The basis head: an alternative to the paper's last layer (see [`Head`](crate::Head)).
//!
//! The paper builds every output token from the N maps before the last layer, each through a `k x k`
//! kernel of its own: a token's pattern must lie in the span of `N k^2` shifted shared maps. The
//! difference between two tasks' adapters is a different pattern in almost every one of the ~1,600
//! tokens, which that span cannot hold (results/generator/README.md, "Why the generator underfits").
//! The basis head instead learns `K` whole token tensors and mixes them with `K` coefficients read
//! from the trunk: `y = sum_k c_k(x) B_k + B_0` with `c = W mean_W(x) + b`. It is the output layer of
//! Text-to-LoRA's hypernetwork (a linear map from a hidden vector to every weight of the adapter),
//! with the convolutional trunk as the hidden vector's source.

use crate::config::Stage;
use crate::layer::Init;
use crate::Result;
use candle_core::{Tensor, Var, D};

/// The trainable tensors of the basis head.
#[derive(Debug, Clone)]
pub struct BasisHead {
    pub input: Stage,
    pub output: Stage,
    /// `[K, N H]` and `[K]`: the coefficients from the trunk's maps averaged over W.
    pub coef_w: Var,
    pub coef_b: Var,
    /// `[K, N' H' W']`: the K directions, zero at the start (the first output is `bias`).
    pub basis: Var,
    /// `[N' H' W']`: the output when every coefficient is zero.
    pub bias: Var,
    /// The directions are constants of the forward pass (no gradient is computed for them).
    pub(crate) frozen: bool,
}

impl BasisHead {
    /// A head whose tensors come from `make(name, shape, init)` in a fixed order (as
    /// [`HyperConvLayer::build`](crate::HyperConvLayer)).
    pub(crate) fn build(
        input: Stage,
        output: Stage,
        k: usize,
        mut make: impl FnMut(&'static str, &[usize], Init) -> Result<Var>,
    ) -> Result<Self> {
        let [n, h, _] = input;
        let out: usize = output.iter().product();
        let fan_in = Init::Uniform(1.0 / ((n * h) as f64).sqrt());
        Ok(Self {
            input,
            output,
            coef_w: make("coef.weight", &[k, n * h], fan_in)?,
            coef_b: make("coef.bias", &[k], Init::Zeros)?,
            basis: make("basis", &[k, out], Init::Zeros)?,
            bias: make("bias", &[out], Init::Zeros)?,
            frozen: false,
        })
    }

    /// Every tensor with its name within the head.
    pub fn named_vars(&self) -> [(&'static str, &Var); 4] {
        [
            ("coef.weight", &self.coef_w),
            ("coef.bias", &self.coef_b),
            ("basis", &self.basis),
            ("bias", &self.bias),
        ]
    }

    /// The coefficients `[B, K]` of a batch of trunk outputs `[B, N, H, W]`.
    pub fn coefficients(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, h, _) = x.dims4()?;
        let pooled = x.mean(D::Minus1)?.reshape((b, n * h))?;
        Ok(pooled
            .matmul(&self.coef_w.as_tensor().t()?)?
            .broadcast_add(self.coef_b.as_tensor())?)
    }

    /// `[B, N, H, W] -> [B, N', H', W']`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b = x.dim(0)?;
        let basis = self.basis.as_tensor();
        let basis = if self.frozen {
            basis.detach()
        } else {
            basis.clone()
        };
        let y = self
            .coefficients(x)?
            .matmul(&basis)?
            .broadcast_add(self.bias.as_tensor())?;
        Ok(y.reshape((b, self.output[0], self.output[1], self.output[2]))?)
    }
}
