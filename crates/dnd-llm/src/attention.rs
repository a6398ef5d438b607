//! Causal grouped-query attention as one fused CPU op, forward and backward.
//!
//! Written as candle ops, attention was a batched matmul for the scores, a softmax, a second batched
//! matmul, and copies to put the heads back in rows; its backward four more batched matmuls (with their
//! transposed copies) and a zeroed buffer plus a sum per gradient. The matmuls ran on the `gemm` crate's
//! rayon pool, whose idle workers then polled beside OpenBLAS's threads. Here each (batch element, KV
//! head) is one work item on candle's pool, with single-threaded products on strided views: the heads
//! are read from and written to their columns in place, and the probabilities of the forward pass are
//! kept for the backward one.

use crate::ops::{cast, slice, Out};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use num_traits::{Float, NumAssign};
use std::sync::Mutex;

mod small;
use small::Small;

/// Which keys each query sees.
#[derive(Clone, Debug)]
pub struct Mask {
    /// Positions per query group: row `i` of a head's rows is query position `offset + i % t`.
    pub t: usize,
    /// Position of the first new query (the number of cached positions before it).
    pub offset: usize,
    /// For a left-padded batch, the first real position of each batch element; empty when none is
    /// padded. Padded batches have no backward pass (inference only).
    pub starts: Vec<usize>,
}

impl Mask {
    /// Keys `start..end` that query row `row` of batch element `b` sees among `s`.
    fn visible(&self, b: usize, row: usize, s: usize) -> std::ops::Range<usize> {
        let end = (self.offset + row % self.t + 1).min(s);
        // A padding query (before its row's start) sees its own position only: finite, and unused.
        let start = self.starts.get(b).map_or(0, |&st| st.min(end - 1));
        start..end
    }
}

/// `softmax(scale q k^T, causal) v` for `q [B, nkv, g*t, hd]` (the `g` query heads sharing a KV
/// head stacked along the rows) and `k`, `v` `[B, nkv, S, hd]`, whose `[S, hd]` matrices must be
/// contiguous (a KV cache slot's views are: only their batch strides skip spare capacity). Returns
/// rows `[B*t, nkv*g*hd]`: position by position, the heads side by side.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Mask,
) -> Result<Tensor> {
    let keep = q.track_op() || k.track_op() || v.track_op();
    let op = Attention {
        scale,
        mask,
        probs: Mutex::new(None),
        keep,
    };
    q.contiguous()?.apply_op3(k, v, op)
}

struct Attention {
    scale: f64,
    mask: Mask,
    /// The forward pass's probabilities `[B, nkv, g*t, S]`, when a backward pass may follow.
    probs: Mutex<Option<CpuStorage>>,
    keep: bool,
}

/// The sizes of one call, and where each (batch element, KV head) item's matrices start.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    nkv: usize,
    /// Query rows per item (`g * t`).
    rows: usize,
    t: usize,
    s: usize,
    hd: usize,
    /// Item strides of `k` and `v` along the batch and head axes, and their first element.
    k_at: (usize, usize, usize),
    v_at: (usize, usize, usize),
}

impl Dims {
    fn new(ql: &Layout, kl: &Layout, vl: &Layout, t: usize) -> Result<Self> {
        let (b, nkv, rows, hd) = ql.shape().dims4()?;
        let (kb, kn, s, khd) = kl.shape().dims4()?;
        if (kb, kn, khd) != (b, nkv, hd) || vl.shape() != kl.shape() || t == 0 || rows % t != 0 {
            bail!(
                "attention: q {:?}, k {:?}, v {:?} with {t} positions",
                ql.shape(),
                kl.shape(),
                vl.shape()
            )
        }
        let at = |l: &Layout| -> Result<(usize, usize, usize)> {
            let st = l.stride();
            if st[3] != 1 || (s > 1 && st[2] != hd) {
                bail!("attention: keys and values need contiguous [S, hd] matrices")
            }
            Ok((st[0], st[1], l.start_offset()))
        };
        Ok(Self {
            b,
            nkv,
            rows,
            t,
            s,
            hd,
            k_at: at(kl)?,
            v_at: at(vl)?,
        })
    }

    fn items(&self) -> usize {
        self.b * self.nkv
    }

    /// Width of an output row: every query head.
    fn width(&self) -> usize {
        self.nkv * self.rows / self.t * self.hd
    }

    fn kv(&self, (sb, sh, first): (usize, usize, usize), item: usize) -> usize {
        first + (item / self.nkv) * sb + (item % self.nkv) * sh
    }
}

/// A strided matrix view for [`mm`]: first element, row stride, column stride.
#[derive(Clone, Copy)]
struct View<T> {
    p: *const T,
    rs: usize,
    cs: usize,
}

impl<T> View<T> {
    fn rows(p: *const T, rs: usize) -> Self {
        Self { p, rs, cs: 1 }
    }

    fn t(self) -> Self {
        Self {
            p: self.p,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// `dst [m, n] (+)= a [m, k] · b [k, n]` on the calling thread, `dst` with row stride `dst_rs`.
///
/// # Safety
/// Every view must address `m x k`, `k x n` and `m x n` valid elements, and no other thread may
/// write `dst`'s elements meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn mm<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    dst_rs: usize,
    a: View<T>,
    b: View<T>,
    accumulate: bool,
) {
    // SAFETY: the caller's contract; `accumulate` decides whether `dst` is read first.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a.p,
            a.cs as isize,
            a.rs as isize,
            b.p,
            b.cs as isize,
            b.rs as isize,
            if accumulate { T::one() } else { T::zero() },
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Run `f(item)` for every item on candle's pool.
fn for_items(n: usize, f: impl Fn(usize) + Sync) {
    candle_core::utils::barrier_pool().execute_chunked(n, |r| r.for_each(&f));
}

impl Attention {
    /// Probabilities of item `item` into `p [rows, S]` (zero outside the mask).
    fn probs_of<T: WithDType + Small + NumAssign>(
        &self,
        d: &Dims,
        q: &[T],
        k: &[T],
        item: usize,
        p: &mut [T],
    ) {
        let (rows, s, hd) = (d.rows, d.s, d.hd);
        let (qi, ki) = (&q[item * rows * hd..], &k[d.kv(d.k_at, item)..]);
        if T::takes(rows * s * hd) {
            T::dots((rows, s, hd), qi, hd, ki, hd, p);
        } else {
            let (qv, kv) = (View::rows(qi.as_ptr(), hd), View::rows(ki.as_ptr(), hd));
            // SAFETY: q holds rows x hd at this item, k S x hd, p rows x S; p is this item's own.
            unsafe { mm((rows, s, hd), p.as_mut_ptr(), s, qv, kv.t(), false) };
        }
        let scale: T = cast(self.scale);
        for (i, row) in p.chunks_exact_mut(s).enumerate() {
            let vis = self.mask.visible(item / d.nkv, i, s);
            let m = row[vis.clone()]
                .iter()
                .fold(T::neg_infinity(), |a, &x| Float::max(a, x * scale));
            let mut sum = T::zero();
            for (j, x) in row.iter_mut().enumerate() {
                *x = if vis.contains(&j) {
                    (*x * scale - m).exp()
                } else {
                    T::zero()
                };
                sum += *x;
            }
            let inv = T::one() / sum;
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }

    fn fwd<T: WithDType + Small + NumAssign>(
        &self,
        d: &Dims,
        q: &[T],
        k: &[T],
        v: &[T],
    ) -> (Vec<T>, Vec<T>) {
        let (rows, s, hd, t, w) = (d.rows, d.s, d.hd, d.t, d.width());
        let g = rows / t;
        let mut y = vec![T::zero(); d.b * t * w];
        let mut probs = vec![T::zero(); if self.keep { d.items() * rows * s } else { 0 }];
        let (yo, po) = (Out(y.as_mut_ptr()), Out(probs.as_mut_ptr()));
        for_items(d.items(), |item| {
            let mut local = Vec::new();
            let p: &mut [T] = if self.keep {
                // SAFETY: item `item`'s block of `probs` is written by this call only.
                unsafe { std::slice::from_raw_parts_mut(po.at(item * rows * s), rows * s) }
            } else {
                local.resize(rows * s, T::zero());
                &mut local
            };
            self.probs_of(d, q, k, item, p);
            let (b, h) = (item / d.nkv, item % d.nkv);
            let vi = &v[d.kv(d.v_at, item)..];
            for gi in 0..g {
                let dst = (b * t) * w + (h * g + gi) * hd;
                let pi = &p[gi * t * s..];
                // SAFETY: head h*g+gi's columns of batch element b's t rows belong to this item.
                unsafe {
                    if T::takes(t * hd * s) {
                        T::axpys((t, s, hd), pi, vi, hd, yo.at(dst), w);
                    } else {
                        let (pv, vv) = (View::rows(pi.as_ptr(), s), View::rows(vi.as_ptr(), hd));
                        mm((t, hd, s), yo.at(dst), w, pv, vv, false);
                    }
                }
            }
        });
        (y, probs)
    }

    /// Gradients of `q`, `k`, `v` (`k` and `v` as contiguous `[B, nkv, S, hd]`) from `dy`.
    fn bwd<T: WithDType + Float>(
        &self,
        d: &Dims,
        (q, k, v): (&[T], &[T], &[T]),
        probs: &[T],
        dy: &[T],
    ) -> [Vec<T>; 3] {
        let (rows, s, hd, t, w) = (d.rows, d.s, d.hd, d.t, d.width());
        let g = rows / t;
        let mut dq = vec![T::zero(); d.items() * rows * hd];
        let mut dk = vec![T::zero(); d.items() * s * hd];
        let mut dv = vec![T::zero(); d.items() * s * hd];
        let (qo, ko, vo) = (
            Out(dq.as_mut_ptr()),
            Out(dk.as_mut_ptr()),
            Out(dv.as_mut_ptr()),
        );
        let scale: T = cast(self.scale);
        for_items(d.items(), |item| {
            let (b, h) = (item / d.nkv, item % d.nkv);
            let p = &probs[item * rows * s..(item + 1) * rows * s];
            let kv = View::rows(k[d.kv(d.k_at, item)..].as_ptr(), hd);
            let vv = View::rows(v[d.kv(d.v_at, item)..].as_ptr(), hd);
            let qv = View::rows(q[item * rows * hd..].as_ptr(), hd);
            let dyv = |gi: usize| View::rows(dy[(b * t) * w + (h * g + gi) * hd..].as_ptr(), w);
            let mut ds = vec![T::zero(); rows * s];
            // SAFETY (every product below): the views address this item's matrices of the sizes
            // given, and the destinations are this item's own blocks of dq, dk, dv and `ds`.
            unsafe {
                for gi in 0..g {
                    let dst = ds[gi * t * s..].as_mut_ptr();
                    mm((t, s, hd), dst, s, dyv(gi), vv.t(), false);
                    let pv = View::rows(p[gi * t * s..].as_ptr(), s);
                    mm(
                        (s, hd, t),
                        vo.at(item * s * hd),
                        hd,
                        pv.t(),
                        dyv(gi),
                        gi > 0,
                    );
                }
            }
            for (dr, pr) in ds.chunks_exact_mut(s).zip(p.chunks_exact(s)) {
                let dot = dr.iter().zip(pr).fold(T::zero(), |a, (&x, &y)| a + x * y);
                for (x, &y) in dr.iter_mut().zip(pr) {
                    *x = scale * y * (*x - dot);
                }
            }
            let dsv = View::rows(ds.as_ptr(), s);
            unsafe {
                mm((rows, hd, s), qo.at(item * rows * hd), hd, dsv, kv, false);
                mm((s, hd, rows), ko.at(item * s * hd), hd, dsv.t(), qv, false);
            }
        });
        [dq, dk, dv]
    }
}

/// Gradients as tensors of the shapes of their arguments.
fn tensors<T: WithDType>(
    g: [Vec<T>; 3],
    shapes: [&Shape; 3],
    dev: &candle_core::Device,
) -> Result<[Tensor; 3]> {
    let [a, b, c] = g;
    Ok([
        Tensor::from_vec(a, shapes[0], dev)?,
        Tensor::from_vec(b, shapes[1], dev)?,
        Tensor::from_vec(c, shapes[2], dev)?,
    ])
}

/// The data of `s` from the start of its buffer (views carry their own offsets in [`Dims`]).
fn whole<T: WithDType>(s: &CpuStorage) -> Result<&[T]> {
    s.as_slice::<T>()
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::new(ql, kl, vl, self.mask.t)?;
        let (y, probs) = match qs.dtype() {
            DType::F32 => {
                let (y, p) = self.fwd(&d, slice(qs, ql)?, whole(ks)?, whole(vs)?);
                (CpuStorage::F32(y), CpuStorage::F32(p))
            }
            DType::F64 => {
                let (y, p) = self.fwd(&d, slice(qs, ql)?, whole(ks)?, whole(vs)?);
                (CpuStorage::F64(y), CpuStorage::F64(p))
            }
            dt => bail!("attention: unsupported dtype {dt:?}"),
        };
        if self.keep {
            *self.probs.lock().expect("probabilities lock") = Some(probs);
        }
        Ok((y, Shape::from((d.b * d.t, d.width()))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !self.mask.starts.is_empty() {
            bail!("attention: no backward pass for padded batches")
        }
        let Some(probs) = self.probs.lock().expect("probabilities lock").take() else {
            bail!("attention: backward pass without the forward pass's probabilities")
        };
        let (q, k, v, dy) = (
            q.contiguous()?,
            k.contiguous()?,
            v.contiguous()?,
            dy.contiguous()?,
        );
        let grads = {
            let (qs, ql) = q.storage_and_layout();
            let (ks, kl) = k.storage_and_layout();
            let (vs, vl) = v.storage_and_layout();
            let (ys, yl) = dy.storage_and_layout();
            let (
                candle_core::Storage::Cpu(qs),
                candle_core::Storage::Cpu(ks),
                candle_core::Storage::Cpu(vs),
                candle_core::Storage::Cpu(ys),
            ) = (&*qs, &*ks, &*vs, &*ys)
            else {
                bail!("attention: tensors are not on the CPU")
            };
            let d = Dims::new(ql, kl, vl, self.mask.t)?;
            let dev = q.device();
            let shapes = [q.shape(), k.shape(), v.shape()];
            match qs.dtype() {
                DType::F32 => {
                    let args = (slice(qs, ql)?, slice(ks, kl)?, slice(vs, vl)?);
                    let g = self.bwd::<f32>(&d, args, probs.as_slice()?, slice(ys, yl)?);
                    tensors(g, shapes, dev)?
                }
                DType::F64 => {
                    let args = (slice(qs, ql)?, slice(ks, kl)?, slice(vs, vl)?);
                    let g = self.bwd::<f64>(&d, args, probs.as_slice()?, slice(ys, yl)?);
                    tensors(g, shapes, dev)?
                }
                dt => bail!("attention: unsupported dtype {dt:?}"),
            }
        };
        let [dq, dk, dv] = grads;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

#[cfg(test)]
mod tests {
    use super::small::SMALL;
    use super::*;
    use crate::test_util::seeded;
    use candle_core::{Var, D};
    use dnd_testkit::max_abs_diff;

    /// The same attention from candle primitives: scores, an additive mask, softmax, then the
    /// heads put back in rows.
    fn plain(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, m: &Mask) -> Tensor {
        let (b, nkv, rows, hd) = q.dims4().unwrap();
        let s = k.dim(2).unwrap();
        let mut add = vec![0f64; b * rows * s];
        for bi in 0..b {
            for i in 0..rows {
                let vis = m.visible(bi, i, s);
                for j in 0..s {
                    if !vis.contains(&j) {
                        add[(bi * rows + i) * s + j] = -1e30;
                    }
                }
            }
        }
        let add = Tensor::from_vec(add, (b, 1, rows, s), q.device())
            .and_then(|a| a.to_dtype(q.dtype()))
            .unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale)
            .unwrap()
            .broadcast_add(&add)
            .unwrap();
        let p = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        let nh = nkv * rows / m.t;
        p.matmul(&v.contiguous().unwrap())
            .unwrap()
            .reshape((b, nh, m.t, hd))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b * m.t, nh * hd))
            .unwrap()
    }

    /// Grouped queries, `g` heads per KV head: the output and the gradients of q, k and v against
    /// candle's autograd of the plain formula.
    fn matches_the_plain_formula(dtype: DType, tol: f64, (b, nkv, g, t, hd): Sizes) {
        let var = |dims: &[usize], seed| {
            Var::from_tensor(&seeded(dims, seed).to_dtype(dtype).unwrap()).unwrap()
        };
        let (q, k, v) = (
            var(&[b, nkv, g * t, hd], 1.0),
            var(&[b, nkv, t, hd], 2.0),
            var(&[b, nkv, t, hd], 3.0),
        );
        let probe = seeded(&[b * t, nkv * g * hd], 4.0).to_dtype(dtype).unwrap();
        let mask = Mask {
            t,
            offset: 0,
            starts: vec![],
        };
        let run = |y: Tensor| {
            let grads = (&y * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let grad = |x: &Var| grads.get(x.as_tensor()).unwrap().clone();
            [y, grad(&q), grad(&k), grad(&v)]
        };
        let fused = run(causal_attention(&q, &k, &v, 0.5, mask.clone()).unwrap());
        let plain = run(plain(&q, &k, &v, 0.5, &mask));
        for (name, (f, p)) in ["y", "dq", "dk", "dv"].iter().zip(fused.iter().zip(&plain)) {
            let d = max_abs_diff(f, p);
            assert!(d < tol, "{name}: max difference {d}");
        }
    }

    /// Batch, KV heads, query heads per KV head, positions, head size.
    type Sizes = (usize, usize, usize, usize, usize);

    /// 4 heads on 2 KV heads, 2 sequences of 5 positions: products under [`SMALL`] (the loops, in
    /// their scalar tails).
    const TINY: Sizes = (2, 2, 2, 5, 4);
    /// SmolLM2's head size and grouping, 4 positions: under [`SMALL`], the loops' 16-wide steps.
    const HEAD64: Sizes = (2, 2, 3, 4, 64);
    /// SmolLM2's head size and grouping, 48 positions: products above [`SMALL`] (the `gemm` crate).
    const LARGE: Sizes = (1, 1, 3, 48, 64);

    #[test]
    fn attention_and_its_gradients_match_candles_autograd_in_f64() {
        for sizes in [TINY, HEAD64, LARGE] {
            assert_eq!(sizes == LARGE, sizes.2 * sizes.3.pow(2) * sizes.4 > SMALL);
            matches_the_plain_formula(DType::F64, 1e-12, sizes);
        }
    }

    #[test]
    fn attention_and_its_gradients_match_candles_autograd_in_f32() {
        for sizes in [TINY, HEAD64, LARGE] {
            matches_the_plain_formula(DType::F32, 1e-5, sizes);
        }
    }

    /// Inference shapes: 2 new positions after 3 cached ones, keys read through a cache slot's view
    /// (spare capacity between batch elements), a left-padded batch.
    /// In f64 with head size 4, in f32 with 64 (the AVX-512 loops where the CPU has them), and 40
    /// new positions after 3 in f64 (the `gemm` crate).
    #[test]
    fn cached_and_padded_batches_match_the_plain_formula() {
        for (dtype, hd, t, tol) in [
            (DType::F64, 4, 2, 1e-12),
            (DType::F32, 64, 2, 1e-5),
            (DType::F64, 64, 40, 1e-12),
        ] {
            let (b, nkv, g, s) = (2, 1, 3, t + 3);
            assert_eq!(t == 40, g * t * s * hd > SMALL);
            let x = |dims: &[usize], seed| seeded(dims, seed).to_dtype(dtype).unwrap();
            let q = x(&[b, nkv, g * t, hd], 1.0);
            let slot = s + 3;
            let (slot_k, slot_v) = (x(&[b, nkv, slot, hd], 2.0), x(&[b, nkv, slot, hd], 3.0));
            let (k, v) = (
                slot_k.narrow(2, 0, s).unwrap(),
                slot_v.narrow(2, 0, s).unwrap(),
            );
            for starts in [vec![], vec![0, 2]] {
                let mask = Mask {
                    t,
                    offset: 3,
                    starts,
                };
                let fused = causal_attention(&q, &k, &v, 0.5, mask.clone()).unwrap();
                let d = max_abs_diff(&fused, &plain(&q, &k, &v, 0.5, &mask));
                assert!(d < tol, "{dtype:?} {mask:?}: max difference {d}");
            }
        }
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let q = seeded(&[1, 2, 4, 4], 1.0);
        let k = seeded(&[1, 1, 4, 4], 2.0);
        let m = Mask {
            t: 4,
            offset: 0,
            starts: vec![],
        };
        let e = causal_attention(&q, &k, &k, 1.0, m).unwrap_err();
        assert!(e.to_string().contains("attention: q [1, 2, 4, 4]"), "{e}");
    }
}
