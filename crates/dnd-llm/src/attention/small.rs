//! Attention's small products: decoding multiplies ~3 query rows by ~100 keys of 64 per (sequence, KV
//! head), where the `gemm` crate's dispatch and packing cost more than the arithmetic (a fifth of
//! batched decoding's time, `perf`, session 16). Loops written with AVX-512 for f32 instead. Plain
//! loops were no faster than the crate: the workspace is compiled for baseline x86-64, where the
//! compiler vectorises them to 128 bits, while the crate picks AVX2 or AVX-512 kernels at run time;
//! so f32 products on CPUs without AVX-512 stay on the crate.

use num_traits::Float;

/// Multiply-adds up to which a product may run here instead of on the `gemm` crate.
pub(super) const SMALL: usize = 32 * 1024;

/// The two products of one work item, per float type.
pub(super) trait Small: Float {
    /// Whether a product of `macs` multiply-adds runs here ([`Self::dots`], [`Self::axpys`]).
    fn takes(macs: usize) -> bool;

    /// `dst[i, j] = a_i · b_j` for `m` rows of `a` (row stride `ars`) and `n` rows of `b` (stride
    /// `brs`), each of `k` elements; `dst` is `[m, n]`, row-major. Plain loops unless a type has
    /// its own.
    fn dots(
        mnk: (usize, usize, usize),
        a: &[Self],
        ars: usize,
        b: &[Self],
        brs: usize,
        dst: &mut [Self],
    ) {
        plain::dots(mnk, a, ars, b, brs, dst)
    }

    /// `dst_i = Σ_j p[i, j] v_j` for `m` rows of `p` (`[m, s]`) and `s` rows of `v` (stride `vrs`) of
    /// `k` elements; row `i` of `dst` starts at `i * drs`. Zero probabilities (masked keys) are
    /// skipped. Plain loops unless a type has its own.
    ///
    /// # Safety
    /// `dst` must address `m` rows of `k` writable elements at stride `drs` that no other thread
    /// writes meanwhile.
    unsafe fn axpys(
        msk: (usize, usize, usize),
        p: &[Self],
        v: &[Self],
        vrs: usize,
        dst: *mut Self,
        drs: usize,
    ) {
        // SAFETY: the caller's contract.
        unsafe { plain::axpys(msk, p, v, vrs, dst, drs) }
    }
}

/// f64 is the gradient checks' type: the plain loops, where speed does not matter, tested there.
impl Small for f64 {
    fn takes(macs: usize) -> bool {
        macs <= SMALL
    }
}

impl Small for f32 {
    fn takes(macs: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        return macs <= SMALL && avx512();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    fn dots(
        mnk: (usize, usize, usize),
        a: &[f32],
        ars: usize,
        b: &[f32],
        brs: usize,
        dst: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            let (m, n, k) = mnk;
            assert!(
                dst.len() >= m * n
                    && (m == 0 || a.len() >= (m - 1) * ars + k)
                    && (n == 0 || b.len() >= (n - 1) * brs + k)
            );
            // SAFETY: AVX-512F is present, and the bounds the kernel reads and writes are checked.
            return unsafe {
                avx512::dots(mnk, a.as_ptr(), ars, b.as_ptr(), brs, dst.as_mut_ptr())
            };
        }
        plain::dots(mnk, a, ars, b, brs, dst)
    }

    unsafe fn axpys(
        msk: (usize, usize, usize),
        p: &[f32],
        v: &[f32],
        vrs: usize,
        dst: *mut f32,
        drs: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            let (m, s, k) = msk;
            assert!(p.len() >= m * s && (s == 0 || v.len() >= (s - 1) * vrs + k));
            // SAFETY: AVX-512F is present, the reads are checked, the writes are the caller's contract.
            return unsafe { avx512::axpys(msk, p.as_ptr(), v.as_ptr(), vrs, dst, drs) };
        }
        // SAFETY: the caller's contract.
        unsafe { plain::axpys(msk, p, v, vrs, dst, drs) }
    }
}

/// Whether this CPU has AVX-512F (std caches the answer).
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// Any float type, any CPU.
mod plain {
    use num_traits::Float;

    /// Partial sums of [`dot`], so that its loop can vectorise.
    const LANES: usize = 16;

    fn dot<T: Float>(x: &[T], y: &[T]) -> T {
        let mut acc = [T::zero(); LANES];
        let (xc, yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
        let tail = xc
            .remainder()
            .iter()
            .zip(yc.remainder())
            .fold(T::zero(), |s, (&a, &b)| s + a * b);
        for (a, b) in xc.zip(yc) {
            for l in 0..LANES {
                acc[l] = acc[l] + a[l] * b[l];
            }
        }
        acc.iter().fold(tail, |s, &v| s + v)
    }

    pub(super) fn dots<T: Float>(
        (m, n, k): (usize, usize, usize),
        a: &[T],
        ars: usize,
        b: &[T],
        brs: usize,
        dst: &mut [T],
    ) {
        if n == 0 {
            return;
        }
        for (i, row) in dst.chunks_exact_mut(n).take(m).enumerate() {
            let ai = &a[i * ars..][..k];
            for (j, x) in row.iter_mut().enumerate() {
                *x = dot(ai, &b[j * brs..][..k]);
            }
        }
    }

    /// # Safety
    /// [`super::Small::axpys`]'.
    pub(super) unsafe fn axpys<T: Float>(
        (m, s, k): (usize, usize, usize),
        p: &[T],
        v: &[T],
        vrs: usize,
        dst: *mut T,
        drs: usize,
    ) {
        for i in 0..m {
            // SAFETY: the caller's contract.
            let out = unsafe { std::slice::from_raw_parts_mut(dst.add(i * drs), k) };
            out.fill(T::zero());
            let pi = &p[i * s..][..s];
            for (j, &w) in pi.iter().enumerate().filter(|(_, w)| !w.is_zero()) {
                for (o, &x) in out.iter_mut().zip(&v[j * vrs..][..k]) {
                    *o = *o + w * x;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::Small::dots`] on raw pointers, 16 elements per step, the tail scalar.
    ///
    /// # Safety
    /// AVX-512F; `a`, `b` and `dst` address what the sizes and strides say.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dots(
        (m, n, k): (usize, usize, usize),
        a: *const f32,
        ars: usize,
        b: *const f32,
        brs: usize,
        dst: *mut f32,
    ) {
        // SAFETY: the caller's contract; every index stays below the sizes given.
        unsafe {
            for j in 0..n {
                let bj = b.add(j * brs);
                for i in 0..m {
                    let ai = a.add(i * ars);
                    let mut acc = _mm512_setzero_ps();
                    let mut c = 0;
                    while c + 16 <= k {
                        acc = _mm512_fmadd_ps(
                            _mm512_loadu_ps(ai.add(c)),
                            _mm512_loadu_ps(bj.add(c)),
                            acc,
                        );
                        c += 16;
                    }
                    let mut sum = _mm512_reduce_add_ps(acc);
                    for c in c..k {
                        sum += *ai.add(c) * *bj.add(c);
                    }
                    *dst.add(i * n + j) = sum;
                }
            }
        }
    }

    /// [`super::Small::axpys`] on raw pointers: 64 columns at a time in four registers, so that
    /// consecutive keys' multiply-adds do not wait on one another, then 16, then the tail scalar.
    ///
    /// # Safety
    /// AVX-512F; `p`, `v` and `dst` address what the sizes and strides say.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn axpys(
        (m, s, k): (usize, usize, usize),
        p: *const f32,
        v: *const f32,
        vrs: usize,
        dst: *mut f32,
        drs: usize,
    ) {
        // SAFETY: the caller's contract; every index stays below the sizes given.
        unsafe {
            for i in 0..m {
                let (pi, out) = (p.add(i * s), dst.add(i * drs));
                let mut c = 0;
                while c + 64 <= k {
                    let mut acc = [_mm512_setzero_ps(); 4];
                    for j in (0..s).filter(|&j| *pi.add(j) != 0.0) {
                        let (w, vj) = (_mm512_set1_ps(*pi.add(j)), v.add(j * vrs + c));
                        for (u, a) in acc.iter_mut().enumerate() {
                            *a = _mm512_fmadd_ps(w, _mm512_loadu_ps(vj.add(16 * u)), *a);
                        }
                    }
                    for (u, a) in acc.iter().enumerate() {
                        _mm512_storeu_ps(out.add(c + 16 * u), *a);
                    }
                    c += 64;
                }
                while c + 16 <= k {
                    let mut acc = _mm512_setzero_ps();
                    for j in (0..s).filter(|&j| *pi.add(j) != 0.0) {
                        let vj = _mm512_loadu_ps(v.add(j * vrs + c));
                        acc = _mm512_fmadd_ps(_mm512_set1_ps(*pi.add(j)), vj, acc);
                    }
                    _mm512_storeu_ps(out.add(c), acc);
                    c += 16;
                }
                for c in c..k {
                    let mut sum = 0.0;
                    for j in (0..s).filter(|&j| *pi.add(j) != 0.0) {
                        sum += *pi.add(j) * *v.add(j * vrs + c);
                    }
                    *out.add(c) = sum;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: f64) -> Vec<f64> {
        (0..n)
            .map(|i| ((i as f64 + 1.0) * (seed + 0.37) * 12.9898).sin())
            .collect()
    }

    /// f32 (the AVX-512 kernels where the CPU has them) against f64 sums, at head sizes that use each
    /// of their steps (64 = 4 x 16; 88 = 64 + 16 + 8; 7: the tail alone), strided rows, and a masked
    /// key (zero probability) whose values are NaN; nothing is written between `out`'s rows.
    #[test]
    fn f32_products_match_f64_sums() {
        for k in [64, 88, 7] {
            let (m, n, stride) = (3, 11, k + 5);
            let a = values(m * stride, 1.0);
            let mut b = values(n * stride, 2.0);
            let mut p = values(m * n, 3.0);
            // Every row masks key 4, whose values are NaN: a masked key must not reach the output.
            for i in 0..m {
                p[i * n + 4] = 0.0;
            }
            b[4 * stride..][..k].fill(f64::NAN);
            let f = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let mut got = vec![0f32; m * n];
            f32::dots((m, n, k), &f(&a), stride, &f(&b), stride, &mut got);
            let mut out = vec![f32::NAN; m * stride];
            // SAFETY: `out` holds m rows of k at stride `stride`.
            unsafe { f32::axpys((m, n, k), &f(&p), &f(&b), stride, out.as_mut_ptr(), stride) };
            for i in 0..m {
                for j in (0..n).filter(|&j| j != 4) {
                    let want: f64 = (0..k).map(|c| a[i * stride + c] * b[j * stride + c]).sum();
                    let d = (got[i * n + j] as f64 - want).abs();
                    assert!(d < 1e-5, "k {k}: score ({i}, {j}) off by {d}");
                }
                for c in 0..k {
                    let want: f64 = (0..n)
                        .filter(|&j| j != 4)
                        .map(|j| p[i * n + j] * b[j * stride + c])
                        .sum();
                    let d = (out[i * stride + c] as f64 - want).abs();
                    assert!(d < 1e-5, "k {k}: output ({i}, {c}) off by {d}");
                }
                if i + 1 < m {
                    assert!(out[i * stride + k..(i + 1) * stride]
                        .iter()
                        .all(|v| v.is_nan()));
                }
            }
        }
    }
}
