//! im2col for 'same' convolutions as one candle op, with col2im as its backward.
//!
//! Built from candle ops (two `pad_with_zeros`, `k^2` narrowed views stacked, a reshape), the patch
//! matrix took four full copies and as many fresh buffers per conv; the page faults and strided copies
//! were most of the decoder's forward time and of `dnd generate`'s memory. Here it is written once,
//! row by row with slice copies, and its backward (summing each patch entry back onto the pixel it came
//! from) is one pass too.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};

/// The output columns `j` whose tap `dj` reads inside the input row (input column `j + dj - p`).
fn valid_cols(w: usize, p: usize, dj: usize) -> std::ops::Range<usize> {
    p.saturating_sub(dj)..(w + p - dj).min(w)
}

/// `[B, C, H, W]` -> `[B, C k k, H W]`: row `(c, di, dj)` holds input channel `c` shifted by
/// `(di - p, dj - p)`, zero outside the image (`p = k / 2`). Row order matches a `[O, C, k, k]` weight
/// flattened to `[O, C k k]`.
pub(crate) struct Im2col {
    pub k: usize,
}

/// Which input pixel each patch entry reads, for both directions: calls `f(dst_range, src_start)` for
/// every run of one output row that reads one contiguous run of one input row.
fn for_each_run(
    (b, c, h, w): (usize, usize, usize, usize),
    k: usize,
    mut f: impl FnMut(std::ops::Range<usize>, usize),
) {
    let p = k / 2;
    for bc in 0..b * c {
        for di in 0..k {
            for dj in 0..k {
                let row = (bc * k + di) * k + dj;
                let cols = valid_cols(w, p, dj);
                for i in 0..h {
                    let Some(r) = (i + di).checked_sub(p).filter(|&r| r < h) else {
                        continue;
                    };
                    let dst = row * h * w + i * w;
                    let src = bc * h * w + r * w + cols.start + dj - p;
                    f(dst + cols.start..dst + cols.end, src);
                }
            }
        }
    }
}

fn im2col<T: WithDType>(src: &[T], dims: (usize, usize, usize, usize), k: usize) -> Vec<T> {
    let (b, c, h, w) = dims;
    let mut out = vec![T::zero(); b * c * k * k * h * w];
    for_each_run(dims, k, |dst, s| {
        let n = dst.len();
        out[dst].copy_from_slice(&src[s..s + n]);
    });
    out
}

fn col2im<T: WithDType>(cols: &[T], dims: (usize, usize, usize, usize), k: usize) -> Vec<T> {
    let (b, c, h, w) = dims;
    let mut out = vec![T::zero(); b * c * h * w];
    for_each_run(dims, k, |from, d| {
        let n = from.len();
        for (o, g) in out[d..d + n].iter_mut().zip(&cols[from]) {
            *o += *g;
        }
    });
    out
}

/// The contiguous slice of a CPU tensor's data, or an error for a strided layout.
fn contiguous<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op} needs a contiguous input"),
    }
}

impl CustomOp1 for Im2col {
    fn name(&self) -> &'static str {
        "im2col-same"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims4()?;
        let (b, c, h, w) = dims;
        let k = self.k;
        let out = match storage {
            CpuStorage::F32(v) => {
                CpuStorage::F32(im2col(contiguous(v, layout, "im2col")?, dims, k))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(im2col(contiguous(v, layout, "im2col")?, dims, k))
            }
            _ => bail!("im2col: only f32 and f64 are supported"),
        };
        Ok((out, Shape::from((b, c * k * k, h * w))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = Col2im {
            k: self.k,
            dims: arg.dims4()?,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// The adjoint of [`Im2col`]: `[B, C k k, H W]` -> `[B, C, H, W]`, each entry added onto the pixel it
/// was read from.
struct Col2im {
    k: usize,
    dims: (usize, usize, usize, usize),
}

impl CustomOp1 for Col2im {
    fn name(&self) -> &'static str {
        "col2im-same"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = self.dims;
        let k = self.k;
        if layout.shape().dims() != [b, c * k * k, h * w] {
            bail!(
                "col2im: gradient is {:?}, expected [{b}, {}, {}]",
                layout.shape(),
                c * k * k,
                h * w
            );
        }
        let out = match storage {
            CpuStorage::F32(v) => {
                CpuStorage::F32(col2im(contiguous(v, layout, "col2im")?, self.dims, k))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(col2im(contiguous(v, layout, "col2im")?, self.dims, k))
            }
            _ => bail!("col2im: only f32 and f64 are supported"),
        };
        Ok((out, Shape::from(self.dims)))
    }
}
