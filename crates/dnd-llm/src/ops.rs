//! Fused CPU kernels with hand-written backward passes for the decoder's non-matmul steps.
//!
//! Written as chains of candle primitives, RMS-norm, rotary embedding and SwiGLU each cost five to
//! ten tensor passes forward and more backward (broadcast reductions, zero padding for `narrow`). One
//! pass per direction is what these ops need. Each backward is checked against finite differences through
//! the whole model (`tests/model_behaviour.rs`).

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType,
};
use num_traits::Float;

/// The contiguous data of a CPU tensor argument as a slice of `T`.
pub(crate) fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
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

pub(crate) fn cast<T: Float>(x: f64) -> T {
    T::from(x).expect("f64 converts to a float type")
}

/// A pointer the items of one pool call write through, each to its own elements.
#[derive(Clone, Copy)]
pub(crate) struct Out<T>(pub(crate) *mut T);
// SAFETY: shared only by the workers of one pool call, which write disjoint elements (see callers).
unsafe impl<T> Sync for Out<T> {}
unsafe impl<T> Send for Out<T> {}

impl<T> Out<T> {
    /// The element `i` places on. A method, so that closures capture the whole `Out` (a `Sync`
    /// value), not its raw pointer field.
    pub(crate) fn at(self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

/// Elements below which a kernel runs on the calling thread: waking the pool costs more than the pass
/// (decoding one token is a few thousand elements per op).
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

/// `P` planes of `rows x width` values, where `f(i, planes)` writes row `i` of every plane. Rows are
/// spread over candle's thread pool: written one thread at a time, these passes left the second core
/// idle (with OpenBLAS's threads asleep between products) for the norms, rotary embedding and SwiGLU
/// of every layer.
fn fill_rows<T: WithDType, const P: usize>(
    rows: usize,
    width: usize,
    f: impl Fn(usize, [&mut [T]; P]) + Sync,
) -> Vec<T> {
    let plane = rows * width;
    let mut out = vec![T::zero(); P * plane];
    let base = Out(out.as_mut_ptr());
    let row = |i: usize| {
        // SAFETY: row `i` of each plane is handed to exactly one call (one worker), the rows lie
        // inside `out` (P planes of rows x width), and `out` outlives every call.
        let planes = std::array::from_fn(|p| unsafe {
            std::slice::from_raw_parts_mut(base.at(p * plane + i * width), width)
        });
        f(i, planes);
    };
    if P * plane < PARALLEL_MIN_ELEMENTS {
        (0..rows).for_each(row);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(rows, |range| range.for_each(&row));
    }
    out
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
    Ok(fill_rows(x.len() / h, h, |i, [out]| {
        let row = &x[i * h..(i + 1) * h];
        let ms = row.iter().fold(T::zero(), |a, &v| a + v * v) / cast(h as f64);
        let r = T::one() / (ms + cast(eps)).sqrt();
        for ((o, &v), &g) in out.iter_mut().zip(row).zip(w) {
            *o = v * r * g;
        }
    }))
}

fn rms_bwd<T: WithDType + Float>(x: &[T], dy: &[T], w: &[T], eps: f64) -> Result<Vec<T>> {
    let h = w.len();
    Ok(fill_rows(x.len() / h, h, |i, [dx]| {
        let (row, drow) = (&x[i * h..(i + 1) * h], &dy[i * h..(i + 1) * h]);
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
        for (((o, &v), &d), &g) in dx.iter_mut().zip(row).zip(drow).zip(w) {
            *o = r * d * g - v * k;
        }
    }))
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
    Ok(fill_rows(x.len() / hd, hd, |r, [out]| {
        let row = &x[r * hd..(r + 1) * hd];
        let p = ((r / rows_per_block) * t + r % t) * half;
        for i in 0..half {
            let (c, s) = (cos[p + i], if inverse { -sin[p + i] } else { sin[p + i] });
            let (a, b) = (row[i], row[i + half]);
            out[i] = a * c - b * s;
            out[i + half] = b * c + a * s;
        }
    }))
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

/// SwiGLU's gating, `silu(gate) * up`, for tensors of one shape. As candle ops it is a unary and a
/// binary pass forward and about ten passes of the same size backward (silu's gradient is built from
/// `exp`, `recip`, affine and product ops, each gradient summed into a zeroed buffer); fused it is one
/// pass each way, both gradients written together.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        bail!("swiglu: gate {:?} against up {:?}", gate.dims(), up.dims())
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

struct SwiGlu;

fn sigmoid<T: Float>(g: T) -> T {
    T::one() / (T::one() + (-g).exp())
}

/// Rows of the last axis of `x`'s layout, and that axis's width.
fn rows_of(l: &Layout) -> (usize, usize) {
    let w = l.shape().dims().last().copied().unwrap_or(1).max(1);
    (l.shape().elem_count() / w, w)
}

fn swiglu_fwd<T: WithDType + Float>(g: &[T], u: &[T], (rows, w): (usize, usize)) -> Result<Vec<T>> {
    Ok(fill_rows(rows, w, |i, [h]| {
        let (g, u) = (&g[i * w..(i + 1) * w], &u[i * w..(i + 1) * w]);
        for ((h, &g), &u) in h.iter_mut().zip(g).zip(u) {
            *h = g * sigmoid(g) * u;
        }
    }))
}

/// `[2, ..]`: the gradients of `gate` and of `up`, from `dh`.
fn swiglu_bwd<T: WithDType + Float>(
    g: &[T],
    u: &[T],
    dh: &[T],
    (rows, w): (usize, usize),
) -> Result<Vec<T>> {
    Ok(fill_rows(rows, w, |i, [dg, du]| {
        let r = i * w..(i + 1) * w;
        let (g, u, dh) = (&g[r.clone()], &u[r.clone()], &dh[r]);
        for i in 0..w {
            let sg = sigmoid(g[i]);
            let silu = g[i] * sg;
            // d silu / dg = sigmoid(g) (1 + g (1 - sigmoid(g)))
            dg[i] = dh[i] * u[i] * sg * (T::one() + g[i] * (T::one() - sg));
            du[i] = dh[i] * silu;
        }
    }))
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = float_dispatch!(s1, swiglu_fwd(slice(s1, l1)?, slice(s2, l2)?, rows_of(l1)));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _h: &Tensor,
        dh: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = g.apply_op3_no_bwd(u, &dh.contiguous()?, &SwiGluGrad)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

struct SwiGluGrad;

impl candle_core::CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "swiglu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = float_dispatch!(
            s1,
            swiglu_bwd(slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?, rows_of(l1))
        );
        let mut dims = vec![2];
        dims.extend(l1.shape().dims());
        Ok((out, Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::seeded;
    use candle_core::Var;
    use dnd_testkit::max_abs_diff;

    /// The fused SwiGLU against candle's autograd of `silu(gate) * up`: output and both gradients, on
    /// one thread (a small tensor) and on the pool (over `PARALLEL_MIN_ELEMENTS`).
    fn swiglu_matches_candle(dtype: DType, tol: f64) {
        for dims in [[3, 5], [40, 1000]] {
            let g = Var::from_tensor(&(seeded(&dims, 1.0) * 3.0).unwrap().to_dtype(dtype).unwrap())
                .unwrap();
            let u = Var::from_tensor(&(seeded(&dims, 2.0) * 3.0).unwrap().to_dtype(dtype).unwrap())
                .unwrap();
            let probe = seeded(&dims, 3.0).to_dtype(dtype).unwrap();
            let run = |h: Tensor| {
                let grads = (&h * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let grad = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
                [h, grad(&g), grad(&u)]
            };
            let fused = run(swiglu(&g, &u).unwrap());
            let plain = run((g.silu().unwrap() * u.as_tensor()).unwrap());
            for (name, (f, p)) in ["h", "dgate", "dup"].iter().zip(fused.iter().zip(&plain)) {
                let diff = max_abs_diff(f, p);
                assert!(diff < tol, "{name} {dims:?}: max difference {diff}");
            }
        }
    }

    #[test]
    fn swiglu_and_its_gradients_match_candles_autograd_in_f64() {
        swiglu_matches_candle(DType::F64, 1e-12);
    }

    #[test]
    fn swiglu_and_its_gradients_match_candles_autograd_in_f32() {
        swiglu_matches_candle(DType::F32, 1e-5);
    }

    #[test]
    fn swiglu_refuses_mismatched_shapes() {
        let e = swiglu(&seeded(&[2, 3], 1.0), &seeded(&[3, 2], 2.0)).unwrap_err();
        assert!(
            e.to_string()
                .contains("swiglu: gate [2, 3] against up [3, 2]"),
            "{e}"
        );
    }
}
