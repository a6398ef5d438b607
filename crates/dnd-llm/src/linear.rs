//! Frozen projection weights. Kept behind one type so the matmul used for base weights can be specialised
//! (e.g. to skip the weight gradient in training) without touching the model code.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};

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

    /// `x [N, in] -> [N, out]`. When `x` carries gradients (LoRA training), the product goes through
    /// [`InputGradMatmul`], whose backward skips the frozen weight's gradient.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.track_op() && matches!(x.dtype(), DType::F32 | DType::F64) && x.device().is_cpu() {
            return x
                .contiguous()?
                .apply_op1(InputGradMatmul { w: self.w.clone() });
        }
        x.matmul(&self.w.t()?)
    }
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
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("input-grad-matmul: contiguous input expected");
        };
        // Copying x in and y out costs O(N (in + out)) against the product's O(N in out).
        let (shape, dev) = (layout.shape(), &Device::Cpu);
        let y = match storage {
            CpuStorage::F32(d) => Tensor::from_slice(&d[a..b], shape, dev)?,
            CpuStorage::F64(d) => Tensor::from_slice(&d[a..b], shape, dev)?,
            _ => candle_core::bail!("input-grad-matmul: f32 or f64 input expected"),
        }
        .matmul(&self.w.t()?)?;
        let out = y.shape().clone();
        let flat = y.flatten_all()?;
        Ok(match storage {
            CpuStorage::F32(_) => (CpuStorage::F32(flat.to_vec1()?), out),
            _ => (CpuStorage::F64(flat.to_vec1()?), out),
        })
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_y.matmul(&self.w)?))
    }
}
