//! Frozen projection weights, and the LoRA-adapted projection used in training. Kept behind one type so
//! the matmuls used for base weights can be specialised (skip the weight gradient, fuse the adapter)
//! without touching the model code.

use crate::qmatmul::Packed;
use candle_core::backend::BackendStorage;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp3, DType, Layout, Module, Result, Shape, Storage, Tensor,
    WithDType,
};

/// Rows up to which an untracked product runs on candle's quantised kernels, when the weight has
/// blocks that [`Packed`] does not take. Decoding one sequence multiplies one row per step, where
/// reading the weights is the whole cost and the blocks are 4-8x smaller than f32; candle's kernels
/// then cost about 10 ms per row on SmolLM2 against f32 OpenBLAS's 47 ms for one row and 100 ms for 16
/// (`dnd bench llm`, session 11: 61.5 vs 21.2 tok/s at 1 sequence, 98.6 vs 159 at 16), so the
/// break-even is near 5 rows.
pub(crate) const QUANTIZED_MAX_ROWS: usize = 4;

/// A weight's quantised blocks for inference: repacked for dnd's kernels where the block type and
/// CPU allow, else candle's.
enum Quantized {
    Packed(Packed),
    Candle(QMatMul),
}

impl Quantized {
    /// Rows up to which an untracked product runs on these blocks. The packed kernels take any
    /// number: at a prompt's 1024 rows (16 x 64) they ran twice as fast as f32 OpenBLAS on SmolLM2
    /// (`dnd bench llm --only decode_batch_quantized --decode-new 2 --decode-prompt 64`: 50 tok/s on
    /// the blocks against 25 on f32, 2 cores, session 16), so a prompt is read on the blocks too, as
    /// llama.cpp does.
    fn max_rows(&self) -> usize {
        match self {
            Quantized::Packed(_) => usize::MAX,
            Quantized::Candle(_) => QUANTIZED_MAX_ROWS,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Quantized::Packed(p) => {
                let rows = x.dim(0)?;
                let x = x.to_dtype(DType::F32)?.contiguous()?;
                let y = {
                    let (s, l) = x.storage_and_layout();
                    let Storage::Cpu(s) = &*s else {
                        bail!("packed product: input is not on the CPU")
                    };
                    p.matmul(slice::<f32>(s, l)?, rows)
                };
                Tensor::from_vec(y, (rows, p.rows()), x.device())
            }
            Quantized::Candle(q) => q.forward(&x.contiguous()?),
        }
    }
}

/// A frozen weight `[out, in]` applied as `x W^T`, optionally with the GGUF's quantised blocks of the
/// same weight for inference.
#[derive(Clone)]
pub struct Frozen {
    w: Tensor,
    q: Option<std::sync::Arc<Quantized>>,
}

impl Frozen {
    pub fn new(w: Tensor) -> Result<Self> {
        Ok(Self {
            w: w.detach(),
            q: None,
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.w
    }

    /// Keep `q` (the same weight, quantised, in the same `[out, in]` row order) for untracked
    /// products (only short ones on candle's blocks): repacked ([`Packed`]) when it can be, else
    /// candle's blocks in a type it has SIMD kernels for ([`fast_blocks`]).
    pub fn set_quantized(&mut self, q: QTensor) -> Result<()> {
        if q.shape().dims() != self.w.dims() {
            bail!(
                "quantised weight {:?} against f32 weight {:?}",
                q.shape().dims(),
                self.w.dims()
            );
        }
        let q = match Packed::new(&q)? {
            Some(p) => Quantized::Packed(p),
            None => Quantized::Candle(QMatMul::from_qtensor(fast_blocks(q)?)?),
        };
        self.q = Some(std::sync::Arc::new(q));
        Ok(())
    }

    /// `x [N, in] -> [N, out]`. Untracked, on the quantised blocks when set (candle's: short inputs
    /// only); otherwise on the CPU the product is [`InputGradMatmul`]: OpenBLAS when the machine has
    /// it (crate::blas), and a backward that skips the frozen weight's gradient.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(q) = &self.q {
            if !x.track_op() && x.rank() == 2 && x.dim(0)? <= q.max_rows() {
                return q.forward(x);
            }
        }
        if fused(x) && x.rank() == 2 {
            return x
                .contiguous()?
                .apply_op1(InputGradMatmul { w: self.w.clone() });
        }
        x.matmul(&self.w.t()?)
    }

    /// `x W^T + s (x A^T) B^T` for a LoRA pair `A [r, in]`, `B [out, r]`. In training (anything
    /// tracked) this is one [`LoraMatmul`]: a single product with `W + s B A`, forward and backward.
    pub fn forward_lora(&self, x: &Tensor, a: &Tensor, b: &Tensor, s: f64) -> Result<Tensor> {
        if (x.track_op() || a.track_op() || b.track_op()) && fused(x) && x.rank() == 2 {
            let op = LoraMatmul {
                w: self.w.clone(),
                s,
                merged: Default::default(),
            };
            return x
                .contiguous()?
                .apply_op3(&a.contiguous()?, &b.contiguous()?, op);
        }
        self.forward(x)? + (x.matmul(&a.t()?)?.matmul(&b.t()?)? * s)?
    }
}

/// `q` in a block type candle multiplies with SIMD kernels: Q4_1, Q5_0 and Q5_1 have only scalar ones
/// (candle 0.11: `vec_dot_unopt`, half of a decoding step's samples), so they are requantised to Q8_0,
/// twice their bytes and a rounding step of at most 1/254 of a block's largest weight on top of theirs.
/// Only for CPUs where [`Packed`] does not run.
fn fast_blocks(q: QTensor) -> Result<QTensor> {
    use candle_core::quantized::GgmlDType;
    match q.dtype() {
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
            QTensor::quantize(&q.dequantize(&candle_core::Device::Cpu)?, GgmlDType::Q8_0)
        }
        _ => Ok(q),
    }
}

/// Whether the fused CPU kernels apply to `x`.
fn fused(x: &Tensor) -> bool {
    matches!(x.dtype(), DType::F32 | DType::F64) && x.device().is_cpu()
}

/// The contiguous data of a CPU tensor argument as a slice of `T`.
fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("fused matmul: argument is not contiguous")
    };
    Ok(&s.as_slice::<T>()?[a..b])
}

/// `x W^T` for a CPU tensor `w` of the same dtype as `x`'s storage.
fn matmul_storage(x: &CpuStorage, l: &Layout, w: &Tensor) -> Result<(CpuStorage, Shape)> {
    let (n, k) = l.shape().dims2()?;
    let (m, wk) = w.dims2()?;
    if wk != k {
        bail!("fused matmul: input [{n}, {k}] against weight [{m}, {wk}]");
    }
    let w = w.contiguous()?;
    let (ws, wl) = w.storage_and_layout();
    let Storage::Cpu(ws) = &*ws else {
        bail!("fused matmul: weight is not on the CPU")
    };
    let y = match x.dtype() {
        DType::F32 => CpuStorage::F32(crate::blas::matmul_nt(slice(x, l)?, slice(ws, wl)?, k)),
        DType::F64 => CpuStorage::F64(crate::blas::gemm_nt(slice(x, l)?, slice(ws, wl)?, k)),
        dt => bail!("fused matmul: unsupported dtype {dt:?}"),
    };
    Ok((y, Shape::from((n, m))))
}

/// `g [N, out] · w [out, in]` (the input gradient of `x w^T`), on OpenBLAS for f32 CPU tensors when
/// loaded and candle's matmul otherwise. The result carries no graph: backward passes call it.
fn matmul_nn(g: &Tensor, w: &Tensor) -> Result<Tensor> {
    if g.dtype() == DType::F32 && g.device().is_cpu() && g.rank() == 2 {
        let (g, w) = (g.contiguous()?, w.contiguous()?);
        let ((n, k), (wk, m)) = (g.dims2()?, w.dims2()?);
        if wk == k {
            let y = {
                let (gs, gl) = g.storage_and_layout();
                let (ws, wl) = w.storage_and_layout();
                match (&*gs, &*ws) {
                    (Storage::Cpu(gs), Storage::Cpu(ws)) => {
                        crate::blas::sgemm_nn(slice(gs, gl)?, slice(ws, wl)?, k)
                    }
                    _ => None,
                }
            };
            if let Some(y) = y {
                return Tensor::from_vec(y, (n, m), g.device());
            }
        }
    }
    g.matmul(w)
}

/// `x W^T` (f32 or f64) whose backward returns only the input gradient `g W`. candle's matmul backward also computes
/// (and keeps until the step ends) an `[out, in]` gradient for the frozen weight of every projection:
/// a third of a training step's FLOPs and gigabytes of memory, all thrown away.
struct InputGradMatmul {
    w: Tensor,
}

impl CustomOp1 for InputGradMatmul {
    fn name(&self) -> &'static str {
        "input-grad-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        matmul_storage(storage, layout, &self.w.to_dtype(storage.dtype())?)
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(matmul_nn(grad_y, &self.w.to_dtype(grad_y.dtype())?)?))
    }
}

/// The LoRA-adapted projection `x (W + s B A)^T` with gradients for `x`, `A` and `B` only. Written
/// as candle ops, a projection costs three products forward and five backward plus four
/// `[N, out]`/`[N, in]` element-wise passes (scale, add, and the gradient sums of the two branches);
/// merging `s B A` into `W` first (an `[out, in]` pass, N times smaller) leaves one large product
/// per direction. The adapter's gradients need `x A^T` and `g B`, both rank-wide.
struct LoraMatmul {
    w: Tensor,
    s: f64,
    /// `W + s B A` from the forward pass, for the backward pass to reuse (it has the same `A`, `B`):
    /// building it again was an `[out, in]` product and sum per projection per step. The price: from
    /// forward to backward a training step holds one more f32 copy of every adapted projection
    /// (+0.4 GB for SmolLM2 with all seven adapted).
    merged: std::sync::Mutex<Option<Tensor>>,
}

impl LoraMatmul {
    /// `W + s B A` in the dtype of `a`.
    fn merged(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if a.dtype() == DType::F32 && self.w.dtype() == DType::F32 && a.device().is_cpu() {
            let (w, a, b) = (self.w.contiguous()?, a.contiguous()?, b.contiguous()?);
            let r = a.dims2()?.0;
            let y = {
                let (ws, wl) = w.storage_and_layout();
                let (as_, al) = a.storage_and_layout();
                let (bs, bl) = b.storage_and_layout();
                match (&*ws, &*as_, &*bs) {
                    (Storage::Cpu(ws), Storage::Cpu(as_), Storage::Cpu(bs)) => {
                        let (w, a, b) = (slice(ws, wl)?, slice(as_, al)?, slice(bs, bl)?);
                        crate::blas::merged_lora(w, b, a, r, self.s as f32)
                    }
                    _ => None,
                }
            };
            if let Some(y) = y {
                return Tensor::from_vec(y, w.shape(), w.device());
            }
        }
        self.w.to_dtype(a.dtype())? + (b.matmul(a)? * self.s)?
    }
}

impl CustomOp3 for LoraMatmul {
    fn name(&self) -> &'static str {
        "lora-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dev = candle_core::Device::Cpu;
        let tensor = |s: &CpuStorage, l: &Layout| -> Result<Tensor> {
            match s {
                CpuStorage::F32(_) => Tensor::from_slice(slice::<f32>(s, l)?, l.shape(), &dev),
                CpuStorage::F64(_) => Tensor::from_slice(slice::<f64>(s, l)?, l.shape(), &dev),
                _ => bail!("lora-matmul: f32 or f64 expected"),
            }
        };
        let merged = self.merged(&tensor(a, al)?, &tensor(b, bl)?)?;
        let y = matmul_storage(x, xl, &merged);
        if let Ok(mut slot) = self.merged.lock() {
            *slot = Some(merged);
        }
        y
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b) = (x.detach(), a.detach(), b.detach());
        let cached = self.merged.lock().ok().and_then(|mut slot| slot.take());
        let merged = match cached {
            Some(m) => m,
            None => self.merged(&a, &b)?,
        };
        let dx = matmul_nn(g, &merged)?;
        let xa = x.matmul(&a.t()?)?;
        let gb = g.matmul(&b)?;
        let da = (gb.t()?.matmul(&x)? * self.s)?;
        let db = (g.t()?.matmul(&xa)? * self.s)?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::seeded;
    use candle_core::Var;
    use dnd_testkit::max_abs_diff;

    /// The fused projection against candle's autograd of the plain formula `x W^T + s x A^T B^T`:
    /// the same output and the same gradients for `x`, `A` and `B`. In f64 (the `gemm` crate) only
    /// rounding differs; in f32 the products run on OpenBLAS where installed (the merged weight, the
    /// forward and input-gradient products).
    fn lora_matmul_matches_the_unfused_formula(dtype: DType, tol: f64) {
        let (n, k, m, r, s) = (5, 7, 6, 3, 1.7);
        let w = Frozen::new(seeded(&[m, k], 1.0).to_dtype(dtype).unwrap()).unwrap();
        let x = Var::from_tensor(&seeded(&[n, k], 2.0).to_dtype(dtype).unwrap()).unwrap();
        let a = Var::from_tensor(&seeded(&[r, k], 3.0).to_dtype(dtype).unwrap()).unwrap();
        let b = Var::from_tensor(&seeded(&[m, r], 4.0).to_dtype(dtype).unwrap()).unwrap();
        let probe = seeded(&[n, m], 5.0).to_dtype(dtype).unwrap();
        let run = |y: Tensor| {
            let grads = (y.clone() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
            [y, g(&x), g(&a), g(&b)]
        };
        let fused = run(w.forward_lora(&x, &a, &b, s).unwrap());
        let plain_y = (x.matmul(&w.weight().t().unwrap()).unwrap()
            + (x.matmul(&a.t().unwrap())
                .unwrap()
                .matmul(&b.t().unwrap())
                .unwrap()
                * s)
                .unwrap())
        .unwrap();
        let plain = run(plain_y);
        for (name, (f, p)) in ["y", "dx", "dA", "dB"].iter().zip(fused.iter().zip(&plain)) {
            let diff = max_abs_diff(f, p);
            assert!(diff < tol, "{name}: max difference {diff}");
        }
    }
    #[test]
    fn lora_matmul_matches_the_unfused_formula_and_its_gradients_in_f64() {
        lora_matmul_matches_the_unfused_formula(DType::F64, 1e-12);
    }

    #[test]
    fn lora_matmul_matches_the_unfused_formula_and_its_gradients_in_f32() {
        lora_matmul_matches_the_unfused_formula(DType::F32, 1e-5);
    }
}
