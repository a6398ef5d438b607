//! The f32 products of the model's projections, through the system's OpenBLAS when it is installed and
//! through the `gemm` crate (candle's own matmul library) otherwise.
//!
//! Why a second library: on the project's AVX-512 machines `gemm` 0.19 reaches 180-240 GFLOP/s at the
//! projection shapes of SmolLM2 (1024 rows), OpenBLAS 290-300, and PyTorch's forward runs at 83% of its
//! own 260 (results/bench/README.md). No product of the model can beat the library under it.
//!
//! Why at run time (`dlopen`) and not linked: a build needs no system package, a machine without
//! OpenBLAS loses only speed, and the choice of OpenBLAS kernels can be made before the library starts.
//! Debian's OpenBLAS 0.3.21 does not recognise these CPUs and falls back to its SSE3 (Prescott) kernels,
//! 5x slower; the kernel set is read from `OPENBLAS_CORETYPE` when the library is loaded, so dnd sets it
//! from the CPU's features first (a value the user set is kept).
//!
//! `DND_BLAS=gemm` forces the `gemm` crate; `DND_BLAS=<path>` loads that OpenBLAS build. The
//! `OPENBLAS_CORETYPE` and `OPENBLAS_THREAD_TIMEOUT` a user sets are kept.

use std::ffi::{c_char, c_float, c_int, CStr};
use std::sync::OnceLock;

/// CBLAS's `CblasRowMajor`, `CblasNoTrans`, `CblasTrans`.
const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_float,
    *const c_float,
    c_int,
    *const c_float,
    c_int,
    c_float,
    *mut c_float,
    c_int,
);

/// The loaded OpenBLAS: its `cblas_sgemm`, and the library kept open for as long as the process runs.
struct OpenBlas {
    sgemm: Sgemm,
    core: String,
    _lib: libloading::Library,
}

static OPENBLAS: OnceLock<Option<OpenBlas>> = OnceLock::new();

/// Which library the products run on, for logs and benchmark records: `openblas (<kernel set>)` or
/// `gemm`.
pub fn backend() -> String {
    match openblas() {
        Some(b) => format!("openblas ({})", b.core),
        None => "gemm".into(),
    }
}

/// Load OpenBLAS now. Call it first thing in `main`, before any thread starts: loading sets
/// `OPENBLAS_CORETYPE`, and changing the environment while other threads read it is undefined
/// behaviour in glibc. Later calls (and the first product) reuse the result.
pub fn init() {
    openblas();
}

/// How long OpenBLAS's idle threads keep polling for work before they sleep, as a power of two of CPU
/// cycles (its default, 28, is about 0.1 s). Between two products of a training step candle runs its
/// element-wise ops on its own threads, and OpenBLAS's pollers (`sched_yield` in a loop) took 15% of
/// the step's samples from them: `dnd bench finetune`, 2 cores, 2 interleaved rounds, 235 tok/s with
/// the default against 260 with 4, the smallest value OpenBLAS takes (a sleeping thread is woken
/// per product, a few microseconds against milliseconds of work).
const THREAD_TIMEOUT: &str = "4";

fn openblas() -> Option<&'static OpenBlas> {
    OPENBLAS.get_or_init(load).as_ref()
}

fn load() -> Option<OpenBlas> {
    let choice = std::env::var("DND_BLAS").unwrap_or_default();
    if choice == "gemm" {
        return None;
    }
    if std::env::var_os("OPENBLAS_CORETYPE").is_none() {
        if let Some(core) = core_type() {
            std::env::set_var("OPENBLAS_CORETYPE", core);
        }
    }
    if std::env::var_os("OPENBLAS_THREAD_TIMEOUT").is_none() {
        std::env::set_var("OPENBLAS_THREAD_TIMEOUT", THREAD_TIMEOUT);
    }
    let names: Vec<&str> = if choice.is_empty() {
        vec!["libopenblas.so.0", "libopenblas.so"]
    } else {
        vec![choice.as_str()]
    };
    let found = names.iter().find_map(|n| open(n).map_err(|e| (n, e)).ok());
    if found.is_none() && !choice.is_empty() {
        tracing::warn!("DND_BLAS={choice}: could not load it; using the gemm crate");
    }
    found
}

fn open(name: &str) -> Result<OpenBlas, libloading::Error> {
    // SAFETY: loading runs OpenBLAS's initialiser, which reads the environment and starts its
    // threads; the symbols are declared with the types of cblas.h and openblas_config.h.
    unsafe {
        let lib = libloading::Library::new(name)?;
        let sgemm = *lib.get::<Sgemm>(b"cblas_sgemm\0")?;
        let threads = *lib.get::<unsafe extern "C" fn(c_int)>(b"openblas_set_num_threads\0")?;
        let corename =
            *lib.get::<unsafe extern "C" fn() -> *const c_char>(b"openblas_get_corename\0")?;
        threads(candle_core::utils::get_num_threads() as c_int);
        let core = CStr::from_ptr(corename()).to_string_lossy().into_owned();
        Ok(OpenBlas {
            sgemm,
            core,
            _lib: lib,
        })
    }
}

/// OpenBLAS's name for the best kernel set this CPU runs.
fn core_type() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
        {
            return Some("SkylakeX");
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Some("Haswell");
        }
    }
    None
}

/// `y [n, m] = x [n, k] · w^T` for row-major `x` and `w [m, k]`: OpenBLAS when loaded, the `gemm`
/// crate otherwise. What every f32 projection of the model runs on.
pub fn matmul_nt(x: &[f32], w: &[f32], k: usize) -> Vec<f32> {
    sgemm_nt(x, w, k).unwrap_or_else(|| gemm_nt(x, w, k))
}

/// `x [n, k] · w^T` for `w [m, k]`, both row-major, straight from and into plain buffers: wrapping the
/// storage in tensors for candle's matmul would copy the input in and the result out.
pub(crate) fn gemm_nt<T: candle_core::WithDType>(x: &[T], w: &[T], k: usize) -> Vec<T> {
    let (n, m) = (x.len() / k, w.len() / k);
    let mut y = vec![T::zero(); n * m];
    let threads = candle_core::utils::get_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: y is n x m (row stride m), x is n x k (row stride k); w^T is read as k x m through
    // w's strides (row stride 1, column stride k); every index stays inside the buffers sized above.
    unsafe {
        gemm::gemm(
            n,
            m,
            k,
            y.as_mut_ptr(),
            1,
            m as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            T::zero(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
    y
}

/// `y [n, m] = x [n, k] · w^T` for a row-major `w [m, k]`, on OpenBLAS when loaded. `None` when it is
/// not, so the caller runs its own product.
pub(crate) fn sgemm_nt(x: &[f32], w: &[f32], k: usize) -> Option<Vec<f32>> {
    product(x, w, k, w.len() / k.max(1), TRANS)
}

/// `y [n, m] = x [n, k] · w` for a row-major `w [k, m]`.
pub(crate) fn sgemm_nn(x: &[f32], w: &[f32], k: usize) -> Option<Vec<f32>> {
    product(x, w, k, w.len() / k.max(1), NO_TRANS)
}

fn product(x: &[f32], w: &[f32], k: usize, m: usize, trans_w: c_int) -> Option<Vec<f32>> {
    let n = x.len() / k.max(1);
    // Not zeroed: with beta 0 OpenBLAS writes every element of C without reading it (it clears C
    // itself first), and zeroing a buffer this size twice was 4% of a training step.
    let mut y: Vec<f32> = Vec::with_capacity(n * m);
    // SAFETY: `call` writes all n x m elements of y when beta is 0 (and returns false having
    // written nothing when OpenBLAS is absent or a size overflows, when y is dropped unread).
    unsafe {
        if !call(Dims { n, m, k }, trans_w, 1.0, x, w, 0.0, y.as_mut_ptr()) {
            return None;
        }
        y.set_len(n * m);
    }
    Some(y)
}

/// `W + s B A` for row-major `w [m, k]`, `b [m, r]`, `a [r, k]`: a copy of `w` with the rank-`r`
/// product accumulated onto it (beta 1), one pass instead of a product, a scaling and a sum.
pub(crate) fn merged_lora(w: &[f32], b: &[f32], a: &[f32], r: usize, s: f32) -> Option<Vec<f32>> {
    let k = a.len() / r.max(1);
    let m = b.len() / r.max(1);
    if w.len() != m * k {
        return None;
    }
    let mut y = w.to_vec();
    // SAFETY: y is m x k and initialised; a product with beta 1 reads and writes only it.
    let done = unsafe {
        call(
            Dims { n: m, m: k, k: r },
            NO_TRANS,
            s,
            b,
            a,
            1.0,
            y.as_mut_ptr(),
        )
    };
    done.then_some(y)
}

/// `[n, k] x [k, m]` sizes of one product.
struct Dims {
    n: usize,
    m: usize,
    k: usize,
}

/// `y [n, m] = alpha x [n, k] op(w) + beta y`, `op(w)` being `w^T` of a row-major `[m, k]` (`TRANS`)
/// or `w` itself as `[k, m]`. False, with nothing written, without OpenBLAS or when a size does not
/// fit its `int`.
///
/// # Safety
/// `y` must have room for `n * m` floats, initialised when `beta` is not 0.
unsafe fn call(
    d: Dims,
    trans_w: c_int,
    alpha: f32,
    x: &[f32],
    w: &[f32],
    beta: f32,
    y: *mut f32,
) -> bool {
    let Some(blas) = openblas() else {
        return false;
    };
    let [Ok(n), Ok(m), Ok(k)] = [d.n, d.m, d.k].map(c_int::try_from) else {
        return false;
    };
    if n == 0 || m == 0 || k == 0 || x.len() != d.n * d.k || w.len() != d.m * d.k {
        return false;
    }
    let ldw = if trans_w == TRANS { k } else { m };
    // SAFETY: x is n x k (lda k) and w m x k or k x m (ldb as chosen), both checked above; y has
    // room for n x m (ldc m) by the caller's promise. OpenBLAS touches nothing else.
    unsafe {
        (blas.sgemm)(
            ROW_MAJOR,
            NO_TRANS,
            trans_w,
            n,
            m,
            k,
            alpha,
            x.as_ptr(),
            k,
            w.as_ptr(),
            ldw,
            beta,
            y,
            m,
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_nt(x: &[f32], w: &[f32], k: usize) -> Vec<f32> {
        let (n, m) = (x.len() / k, w.len() / k);
        let mut y = vec![0f32; n * m];
        for i in 0..n {
            for j in 0..m {
                y[i * m + j] = (0..k).map(|p| x[i * k + p] * w[j * k + p]).sum();
            }
        }
        y
    }

    fn seeded(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + 1.0) * seed).sin()).collect()
    }

    /// Both layouts against a plain triple loop, when this machine has OpenBLAS (the test
    /// script installs it; without it the products report `None` and there is nothing to check).
    #[test]
    fn openblas_products_match_a_plain_loop() {
        let (n, k, m) = (7, 13, 5);
        let (x, w) = (seeded(n * k, 0.37), seeded(m * k, 0.91));
        let Some(y) = sgemm_nt(&x, &w, k) else {
            assert_eq!(backend(), "gemm");
            return;
        };
        let want = naive_nt(&x, &w, k);
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // w^T stored row-major as [k, m]: the same product through the other layout.
        let mut wt = vec![0f32; k * m];
        for j in 0..m {
            for p in 0..k {
                wt[p * m + j] = w[j * k + p];
            }
        }
        let y2 = sgemm_nn(&x, &wt, k).unwrap();
        for (a, b) in y2.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!(backend().starts_with("openblas ("));
    }
}
