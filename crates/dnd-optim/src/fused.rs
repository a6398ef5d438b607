//! The AdamW update as three in-place passes over each variable's storage.
//!
//! Written with tensor ops, one update of a variable allocates about ten temporaries of its size; with
//! the basis head's 50 M parameters the first training run was killed for memory at 19.9 GB
//! (results/generator/README.md). In place, it is three loops and no allocation. The arithmetic is the tensor version's, operation for
//! operation, in the variable's dtype.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use std::ops::{Add, Div, Mul, Sub};

/// `dst = a dst + b src` (the first moment, with `src` the gradient).
pub(crate) struct Ema {
    pub a: f64,
    pub b: f64,
    /// Square `src` first (the second moment).
    pub square: bool,
}

/// `theta = theta decay - step_size m / (sqrt(v) / bc2_sqrt + eps)`, the division by `bc2_sqrt` a
/// multiplication by its inverse as candle's `Tensor / f64` does it.
pub(crate) struct Update {
    pub decay: f64,
    pub step_size: f64,
    pub inv_bc2_sqrt: f64,
    pub eps: f64,
}

/// The contiguous slice a layout covers, or an error for a strided one (optimizer state and
/// parameters are always contiguous; gradients are made so by the caller).
fn span<'a, T>(data: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fused AdamW: {what} is not contiguous"),
    }
}

fn span_mut<'a, T>(data: &'a mut [T], l: &Layout) -> Result<&'a mut [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut data[a..b]),
        None => candle_core::bail!("fused AdamW: the updated tensor is not contiguous"),
    }
}

trait Float:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self>
{
    fn of(x: f64) -> Self;
    fn sqrt(self) -> Self;
}

impl Float for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl Float for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

impl Ema {
    fn apply<T: Float>(&self, dst: &mut [T], src: &[T]) {
        let (a, b) = (T::of(self.a), T::of(self.b));
        for (d, &s) in dst.iter_mut().zip(src) {
            let s = if self.square { s * s } else { s };
            *d = *d * a + s * b;
        }
    }
}

impl InplaceOp2 for Ema {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        match (s1, s2) {
            (CpuStorage::F32(d), CpuStorage::F32(s)) => {
                self.apply(span_mut(d, l1)?, span(s, l2, "the gradient")?)
            }
            (CpuStorage::F64(d), CpuStorage::F64(s)) => {
                self.apply(span_mut(d, l1)?, span(s, l2, "the gradient")?)
            }
            _ => candle_core::bail!("fused AdamW: f32 or f64 moments and gradients of one dtype"),
        }
        Ok(())
    }
}

impl Update {
    fn apply<T: Float>(&self, theta: &mut [T], m: &[T], v: &[T]) {
        let (decay, step, inv_bc2, eps) = (
            T::of(self.decay),
            T::of(self.step_size),
            T::of(self.inv_bc2_sqrt),
            T::of(self.eps),
        );
        for ((t, &m), &v) in theta.iter_mut().zip(m).zip(v) {
            *t = *t * decay - m / (v.sqrt() * inv_bc2 + eps) * step;
        }
    }
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        match (s1, s2, s3) {
            (CpuStorage::F32(t), CpuStorage::F32(m), CpuStorage::F32(v)) => self.apply(
                span_mut(t, l1)?,
                span(m, l2, "the first moment")?,
                span(v, l3, "the second moment")?,
            ),
            (CpuStorage::F64(t), CpuStorage::F64(m), CpuStorage::F64(v)) => self.apply(
                span_mut(t, l1)?,
                span(m, l2, "the first moment")?,
                span(v, l3, "the second moment")?,
            ),
            _ => candle_core::bail!("fused AdamW: f32 or f64 variables and moments of one dtype"),
        }
        Ok(())
    }
}

/// A gradient the fused passes can read: the moment's dtype, contiguous.
pub(crate) fn prepared(g: &Tensor, like: &Tensor) -> Result<Tensor> {
    g.to_dtype(like.dtype())?.contiguous()
}
