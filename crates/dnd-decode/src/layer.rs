//! One hyper-convolutional layer `(N, H, W) -> (N', H', W')` (docs/method.md step 5; official `HyperConvLayer`).
//!
//! Every axis changes size only by being made the channel axis of a 2-D conv (stride 1, 'same' padding),
//! so the layer needs nothing but conv2d, permutes and elementwise ops, all differentiable in candle.
//! (Candle's conv1d has a wrong CPU weight gradient; conv2d's is right.)

use crate::config::Stage;
use crate::im2col::Im2col;
use crate::Result;
use candle_core::{Tensor, Var, D};

/// LayerNorm epsilon (PyTorch's default, as the official code uses).
const LN_EPS: f64 = 1e-5;

/// The trainable tensors of one layer, by the role they play.
#[derive(Debug, Clone)]
pub struct HyperConvLayer {
    pub input: Stage,
    pub output: Stage,
    pub kernel: usize,
    /// LayerNorm affine over (H, W): `[H, W]` each.
    pub norm_weight: Var,
    pub norm_bias: Var,
    /// Path 1: W -> W' (over the (H, N) plane), then H -> H' (over (N, W')). `[out, in, k, k]`.
    pub conv1_w: Var,
    pub conv1_h: Var,
    /// Path 2: H -> H' (over (N, W)), then W -> W' (over (H', N)), then tanh.
    pub conv2_h: Var,
    pub conv2_w: Var,
    /// Added to the two paths before averaging: `[H', W']`.
    pub bias: Var,
    /// N -> N' over (H', W'): `[N', N, k, k]` and `[N']`.
    pub mix_n: Var,
    pub mix_n_bias: Var,
}

/// How a tensor of a fresh layer starts: PyTorch's defaults, which the official code keeps.
pub(crate) enum Init {
    Ones,
    Zeros,
    /// U(-bound, bound); for a conv, bound = 1/sqrt(fan_in) for weight and bias.
    Uniform(f64),
}

impl HyperConvLayer {
    /// A layer whose tensors come from `make(name, shape, init)`, called in a fixed order (so a seeded
    /// initialisation is reproducible): fresh ones for a new decoder, stored ones when loading, which
    /// then never pays for a random initialisation it would overwrite.
    pub(crate) fn build(
        input: Stage,
        output: Stage,
        kernel: usize,
        mut make: impl FnMut(&'static str, &[usize], Init) -> Result<Var>,
    ) -> Result<Self> {
        let ([n, h, w], [n2, h2, w2]) = (input, output);
        let k = kernel;
        let fan_in = |inp: usize| Init::Uniform(1.0 / ((inp * k * k) as f64).sqrt());
        Ok(Self {
            input,
            output,
            kernel,
            norm_weight: make("norm.weight", &[h, w], Init::Ones)?,
            norm_bias: make("norm.bias", &[h, w], Init::Zeros)?,
            conv1_w: make("conv1_w.weight", &[w2, w, k, k], fan_in(w))?,
            conv1_h: make("conv1_h.weight", &[h2, h, k, k], fan_in(h))?,
            conv2_h: make("conv2_h.weight", &[h2, h, k, k], fan_in(h))?,
            conv2_w: make("conv2_w.weight", &[w2, w, k, k], fan_in(w))?,
            bias: make("bias", &[h2, w2], Init::Uniform(1.0 / (h2 * w2) as f64))?,
            mix_n: make("mix_n.weight", &[n2, n, k, k], fan_in(n))?,
            mix_n_bias: make("mix_n.bias", &[n2], fan_in(n))?,
        })
    }

    /// Every tensor with its name within the layer (for saving and optimisers).
    pub fn named_vars(&self) -> [(&'static str, &Var); 9] {
        [
            ("norm.weight", &self.norm_weight),
            ("norm.bias", &self.norm_bias),
            ("conv1_w.weight", &self.conv1_w),
            ("conv1_h.weight", &self.conv1_h),
            ("conv2_h.weight", &self.conv2_h),
            ("conv2_w.weight", &self.conv2_w),
            ("bias", &self.bias),
            ("mix_n.weight", &self.mix_n),
            ("mix_n.bias", &self.mix_n_bias),
        ]
    }

    /// `[B, N, H, W] -> [B, N', H', W']`, plus the input when the shapes are equal (residual).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.forward_no_residual(x)?;
        Ok(if self.input == self.output {
            (x + y)?
        } else {
            y
        })
    }

    fn forward_no_residual(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, h, w) = x.dims4()?;
        let conv = |t: &Tensor, weight: &Var| conv_same(t, weight.as_tensor());
        // LayerNorm over (H, W) of each (b, n) map.
        let flat = x.reshape((b, n, h * w))?;
        let centred = flat.broadcast_sub(&flat.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let x = centred
            .broadcast_div(&(var + LN_EPS)?.sqrt()?)?
            .reshape((b, n, h, w))?
            .broadcast_mul(self.norm_weight.as_tensor())?
            .broadcast_add(self.norm_bias.as_tensor())?;
        // Path 1: [B,W,H,N] -W->W'-> [B,W',H,N] -> [B,H,N,W'] -H->H'-> [B,H',N,W'] -> [B,N,H',W'].
        let p1 = conv(&x.permute((0, 3, 2, 1))?, &self.conv1_w)?;
        let p1 = conv(&p1.permute((0, 2, 3, 1))?, &self.conv1_h)?.permute((0, 2, 1, 3))?;
        // Path 2: [B,H,N,W] -H->H'-> [B,H',N,W] -> [B,W,H',N] -W->W'-> [B,W',H',N] -> [B,N,H',W'].
        let p2 = conv(&x.permute((0, 2, 1, 3))?, &self.conv2_h)?;
        let p2 = conv(&p2.permute((0, 3, 1, 2))?, &self.conv2_w)?
            .permute((0, 3, 2, 1))?
            .tanh()?;
        let y = ((p1 + p2)?.broadcast_add(self.bias.as_tensor())? / 3.0)?;
        let y = conv(&y, &self.mix_n)?;
        Ok(y.broadcast_add(&self.mix_n_bias.as_tensor().reshape((1, (), 1, 1))?)?)
    }
}

/// 'Same' 2-D cross-correlation `[B, C, H, W] * [O, C, k, k] -> [B, O, H, W]` as im2col + matmul.
/// Candle's own conv2d gives the same values, but its weight gradient on CPU is several times slower than
/// the forward; here the backward is a matmul and col2im (see the bench example for the numbers).
pub fn conv_same(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (o, _, k, _) = weight.dims4()?;
    let cols = x.contiguous()?.apply_op1(Im2col { k })?;
    let out = weight.reshape((o, c * k * k))?.broadcast_matmul(&cols)?;
    Ok(out.reshape((b, o, h, w))?)
}
