//! Fused CPU kernels with hand-written backward passes for the decoder's non-matmul steps.
//!
//! Written as chains of candle primitives, RMS-norm, rotary embedding and masked softmax each cost five to
//! ten tensor passes forward and more backward (broadcast reductions, zero padding for `narrow`). One
//! pass per direction is what these ops need. Each backward is checked against finite differences through
//! the whole model (`tests/model_behaviour.rs`).

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType,
};
use num_traits::Float;

/// The contiguous data of a CPU tensor argument as a slice of `T`.
fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("fused op: argument is not contiguous")
    };
    Ok(&s.as_slice::<T>()?[a..b])
}

/// Dispatch a kernel over the float dtypes the model runs in.
macro_rules! float_dispatch {
    ($s:expr, $f:ident ( $($arg:expr),* )) => {
        match $s.dtype() {
            DType::F32 => CpuStorage::F32($f::<f32>($($arg),*)?),
            DType::F64 => CpuStorage::F64($f::<f64>($($arg),*)?),
            dt => bail!("fused op: unsupported dtype {dt:?}"),
        }
    };
}

fn cast<T: Float>(x: f64) -> T {
    T::from(x).expect("f64 converts to a float type")
}

/// RMS-norm over the last axis with a frozen weight: `y = x / sqrt(mean(x^2) + eps) * w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(RmsNorm {
        w: w.contiguous()?,
        eps,
    })
}

struct RmsNorm {
    w: Tensor,
    eps: f64,
}

fn rms_fwd<T: WithDType + Float>(x: &[T], w: &[T], eps: f64) -> Result<Vec<T>> {
    let h = w.len();
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks_exact(h) {
        let ms = row.iter().fold(T::zero(), |a, &v| a + v * v) / cast(h as f64);
        let r = T::one() / (ms + cast(eps)).sqrt();
        y.extend(row.iter().zip(w).map(|(&v, &g)| v * r * g));
    }
    Ok(y)
}

fn rms_bwd<T: WithDType + Float>(x: &[T], dy: &[T], w: &[T], eps: f64) -> Result<Vec<T>> {
    let h = w.len();
    let mut dx = Vec::with_capacity(x.len());
    for (row, drow) in x.chunks_exact(h).zip(dy.chunks_exact(h)) {
        let ms = row.iter().fold(T::zero(), |a, &v| a + v * v) / cast(h as f64);
        let r = T::one() / (ms + cast(eps)).sqrt();
        // g = dy * w;  dx = r g - x r^3 mean(g x)
        let gx = row
            .iter()
            .zip(drow)
            .zip(w)
            .fold(T::zero(), |a, ((&v, &d), &g)| a + d * g * v)
            / cast(h as f64);
        let k = r * r * r * gx;
        dx.extend(
            row.iter()
                .zip(drow)
                .zip(w)
                .map(|((&v, &d), &g)| r * d * g - v * k),
        );
    }
    Ok(dx)
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (ws, wl) = self.w.storage_and_layout();
        let candle_core::Storage::Cpu(ws) = &*ws else {
            bail!("rms-norm: weight is not on the CPU")
        };
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(rms_fwd::<f32>(slice(s, l)?, slice(ws, wl)?, self.eps)?),
            DType::F64 => CpuStorage::F64(rms_fwd::<f64>(slice(s, l)?, slice(ws, wl)?, self.eps)?),
            dt => bail!("rms-norm: unsupported dtype {dt:?}"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let grad = RmsNormGrad {
            w: self.w.clone(),
            eps: self.eps,
        };
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &grad)?))
    }
}

struct RmsNormGrad {
    w: Tensor,
    eps: f64,
}

impl CustomOp2 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (ws, wl) = self.w.storage_and_layout();
        let candle_core::Storage::Cpu(ws) = &*ws else {
            bail!("rms-norm: weight is not on the CPU")
        };
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(rms_bwd::<f32>(
                slice(s1, l1)?,
                slice(s2, l2)?,
                slice(ws, wl)?,
                self.eps,
            )?),
            DType::F64 => CpuStorage::F64(rms_bwd::<f64>(
                slice(s1, l1)?,
                slice(s2, l2)?,
                slice(ws, wl)?,
                self.eps,
            )?),
            dt => bail!("rms-norm: unsupported dtype {dt:?}"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// Softmax over the last axis of `scale * x` for attention scores `[.., rows, S]`, with the causal mask
/// applied on the fly: row `i` holds query position `offset + (i mod t)` and sees keys `0..=` that.
/// Rows are stacked groups of `t` queries (grouped-query heads share keys along the row axis). For a
/// left-padded batch, the rows of batch element `b` (the rows split into `starts.len()` equal parts)
/// see only keys from `starts[b]` on; empty `starts`: no padding. Padded batches have no backward pass
/// (inference only).
pub fn causal_softmax(
    x: &Tensor,
    scale: f64,
    t: usize,
    offset: usize,
    starts: &[usize],
) -> Result<Tensor> {
    x.contiguous()?.apply_op1(CausalSoftmax {
        scale,
        t,
        offset,
        starts: starts.to_vec(),
    })
}

struct CausalSoftmax {
    scale: f64,
    t: usize,
    offset: usize,
    starts: Vec<usize>,
}

fn softmax_fwd<T: WithDType + Float + num_traits::NumAssign>(
    x: &[T],
    s: usize,
    op: &CausalSoftmax,
) -> Result<Vec<T>> {
    let mut y = vec![T::zero(); x.len()];
    let scale: T = cast(op.scale);
    let rows = x.len() / s.max(1);
    let per_batch = rows / op.starts.len().max(1);
    for (i, (row, out)) in x.chunks_exact(s).zip(y.chunks_exact_mut(s)).enumerate() {
        let visible = (op.offset + i % op.t + 1).min(s);
        // A padding query (before its row's start) sees its own position only: finite, and unused.
        let start = op
            .starts
            .get(i / per_batch.max(1))
            .map_or(0, |&st| st.min(visible - 1));
        let (row, out) = (&row[start..visible], &mut out[start..visible]);
        let m = row
            .iter()
            .fold(T::neg_infinity(), |a, &v| Float::max(a, v * scale));
        for (o, &v) in out.iter_mut().zip(row) {
            *o = (v * scale - m).exp();
        }
        let inv = T::one() / out.iter().fold(T::zero(), |a, &e| a + e);
        out.iter_mut().for_each(|o| *o *= inv);
    }
    Ok(y)
}

fn softmax_bwd<T: WithDType + Float>(y: &[T], dy: &[T], s: usize, scale: f64) -> Result<Vec<T>> {
    let scale: T = cast(scale);
    let mut dx = Vec::with_capacity(y.len());
    for (yr, dr) in y.chunks_exact(s).zip(dy.chunks_exact(s)) {
        let dot = yr.iter().zip(dr).fold(T::zero(), |a, (&p, &d)| a + p * d);
        dx.extend(yr.iter().zip(dr).map(|(&p, &d)| scale * p * (d - dot)));
    }
    Ok(dx)
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let s = l.shape().dims().last().copied().unwrap_or(1);
        let out = float_dispatch!(st, softmax_fwd(slice(st, l)?, s, self));
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        if !self.starts.is_empty() {
            bail!("causal-softmax: no backward pass for padded batches")
        }
        Ok(Some(y.apply_op2_no_bwd(
            &dy.contiguous()?,
            &SoftmaxGrad(self.scale),
        )?))
    }
}

struct SoftmaxGrad(f64);

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "causal-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = l1.shape().dims().last().copied().unwrap_or(1);
        let out = float_dispatch!(s1, softmax_bwd(slice(s1, l1)?, slice(s2, l2)?, s, self.0));
        Ok((out, l1.shape().clone()))
    }
}

/// Half-split (NEOX / Hugging Face) rotary embedding of `[B, .., T, hd]` with tables `[T, hd/2]`
/// shared by the batch, or `[B*T, hd/2]`, one block of `T` rows per batch element (a left-padded batch,
/// whose elements are at different positions).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, t: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Rope {
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
        t,
        inverse: false,
    })
}

/// Rotation by the tables' angles; `inverse` rotates backwards, which is the transpose and so the
/// backward pass.
struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// Positions per batch element (rows of the tables per block).
    t: usize,
    inverse: bool,
}

fn rope_kernel<T: WithDType + Float>(
    x: &[T],
    cos: &[T],
    sin: &[T],
    hd: usize,
    t: usize,
    inverse: bool,
) -> Result<Vec<T>> {
    let half = hd / 2;
    let blocks = cos.len() / half / t;
    let rows_per_block = x.len() / hd / blocks;
    let mut y = vec![T::zero(); x.len()];
    for (r, (row, out)) in x.chunks_exact(hd).zip(y.chunks_exact_mut(hd)).enumerate() {
        let p = ((r / rows_per_block) * t + r % t) * half;
        for i in 0..half {
            let (c, s) = (cos[p + i], if inverse { -sin[p + i] } else { sin[p + i] });
            let (a, b) = (row[i], row[i + half]);
            out[i] = a * c - b * s;
            out[i + half] = b * c + a * s;
        }
    }
    Ok(y)
}

impl Rope {
    fn run(&self, st: &CpuStorage, l: &Layout) -> Result<CpuStorage> {
        let hd = l.shape().dims().last().copied().unwrap_or(0);
        let (cs, cl) = self.cos.storage_and_layout();
        let (ss, sl) = self.sin.storage_and_layout();
        let (candle_core::Storage::Cpu(cs), candle_core::Storage::Cpu(ss)) = (&*cs, &*ss) else {
            bail!("rope: tables are not on the CPU")
        };
        let rows = cl.shape().elem_count() * 2 / hd.max(1);
        let x_rows = l.shape().elem_count() / hd.max(1);
        if hd == 0
            || cl.shape().elem_count() * 2 % hd != 0
            || self.t == 0
            || rows % self.t != 0
            || !x_rows.is_multiple_of(rows / self.t)
        {
            bail!(
                "rope: head dim {hd}, {} positions do not fit tables {:?} and input {:?}",
                self.t,
                cl.shape(),
                l.shape()
            )
        }
        let (t, inv) = (self.t, self.inverse);
        Ok(float_dispatch!(
            st,
            rope_kernel(slice(st, l)?, slice(cs, cl)?, slice(ss, sl)?, hd, t, inv)
        ))
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((self.run(st, l)?, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let back = Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            t: self.t,
            inverse: !self.inverse,
        };
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}
