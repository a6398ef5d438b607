//! Inference products on a GGUF's 4- and 8-bit blocks with AVX-512 VNNI, without dequantising.
//!
//! Why our own kernels and not candle's: candle 0.11's CPU kernels for Q4_1 (SmolLM2's projections),
//! Q5_0 and Q5_1 are scalar, its AVX-512 VNNI tiles need `k` to be a multiple of 256 (SmolLM2's hidden
//! size is 576, Qwen2.5-0.5B's 896), and its per-row vector dots read each weight block once per
//! input row: a batch of 16 decoding sequences read the weights 16 times and ran slower than f32
//! (results/bench/README.md). Decoding one sequence is bound by the bytes of weight read per token, so
//! the blocks should be read once per product, at their own size.
//!
//! A weight `[n, k]` is repacked once into tiles of [`TILE`] output rows by 32 inputs: unsigned 4- or
//! 8-bit values `q` with one f16 scale `d` and offset `m` per row and block (`w = d q + m`), laid out
//! so that one 64-byte load holds 4 consecutive inputs of each of the 16 rows. An input row is
//! quantised to signed 8 bits per block of 32 (`x ≈ dx qx`, as llama.cpp does), and one `vpdpbusd`
//! multiplies a load by 4 broadcast inputs into 16 row sums: no horizontal reductions, and each tile is
//! read once for up to [`ROWS`] input rows at a time. Per block,
//! `Σ w x ≈ d dx Σ q qx + m (dx Σ qx)`.
//!
//! Exact repacking (the same weights as the file's): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0. Q4_K's sub-block
//! scales `d·sc` and offsets `dmin·mn`, and Q6_K's sub-block scales `d·sc`, are rounded to f16: a
//! relative 2^-11 of each scale, far below their 4- and 6-bit steps, where the scale is a normal f16
//! (>= 6.1e-5, sub-blocks whose largest weight is above ~2e-3); below, an absolute 2^-25 of the
//! scale, under 1e-6 of a weight. Q6_K has a scale per 16 inputs: its blocks keep one per half
//! (`w = s_h (q - 32)`). Other types (Q2_K, Q3_K, Q5_K, ...) are left to candle.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use std::ops::Range;

/// Output rows per tile: one 512-bit register of 32-bit sums.
pub(crate) const TILE: usize = 16;
/// Inputs per block, the GGUF block size of every type packed here.
const BLOCK: usize = 32;
/// Input rows multiplied per pass over a tile (accumulators kept in registers).
const ROWS: usize = 4;
/// Input rows per work item: a prompt's rows are split too, not only the tiles (a K or V projection
/// has 8-12 tiles, fewer than a large machine's cores).
const ROW_CHUNK: usize = 64;

/// How many bits each packed value has, and what the two f16 numbers per row and block are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bits {
    /// 4-bit values, a scale and an offset: `w = s0 q + s1`.
    Four,
    /// 8-bit values, a scale and an offset: `w = s0 q + s1`.
    Eight,
    /// 8-bit values (6 used), a scale per half of the block: `w = s_h (q - 32)` for the inputs of
    /// half `h` (Q6_K's sub-blocks of 16).
    Halves,
}

impl Bits {
    /// Bytes of values of one tile and block; the 16 rows' f16 `s0` and then their `s1` follow them.
    fn value_bytes(self) -> usize {
        match self {
            Bits::Four => TILE * BLOCK / 2,
            Bits::Eight | Bits::Halves => TILE * BLOCK,
        }
    }

    fn block_bytes(self) -> usize {
        self.value_bytes() + 4 * TILE
    }
}

/// One row's block: unsigned values and the two numbers that make them weights ([`Bits`]).
struct Block {
    s: [f32; 2],
    q: [u8; BLOCK],
}

/// A frozen weight `[n, k]` repacked for [`Packed::matmul`].
pub(crate) struct Packed {
    bits: Bits,
    n: usize,
    k: usize,
    data: Vec<u8>,
}

/// Whether this CPU runs the packed kernels.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl Packed {
    /// Repack `q` (`[n, k]`, rows of GGUF blocks), or `None` when its block type is not one packed here,
    /// `k` is not a whole number of blocks, or the CPU lacks AVX-512 VNNI.
    pub(crate) fn new(q: &QTensor) -> candle_core::Result<Option<Self>> {
        let (n, k) = q.shape().dims2()?;
        let bits = match q.dtype() {
            GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q4K => Bits::Four,
            GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_0 => Bits::Eight,
            GgmlDType::Q6K => Bits::Halves,
            _ => return Ok(None),
        };
        if !available() || k % q.dtype().block_size() != 0 || k == 0 {
            return Ok(None);
        }
        let raw = q.data()?;
        let (row_bytes, kb) = (raw.len() / n, k / BLOCK);
        let dtype = q.dtype();
        let block = |r: usize, b: usize| -> Block {
            let row = &raw[r * row_bytes..(r + 1) * row_bytes];
            decode(dtype, row, b)
        };
        Ok(Some(Self::pack(bits, n, k, kb, block)))
    }

    /// Lay out every row's blocks tile by tile; rows past `n` in the last tile are zero.
    fn pack(
        bits: Bits,
        n: usize,
        k: usize,
        kb: usize,
        block: impl Fn(usize, usize) -> Block,
    ) -> Self {
        let tiles = n.div_ceil(TILE);
        let bb = bits.block_bytes();
        let mut data = vec![0u8; tiles * kb * bb];
        for t in 0..tiles {
            for b in 0..kb {
                let out = &mut data[(t * kb + b) * bb..][..bb];
                for r in 0..TILE.min(n - t * TILE) {
                    let blk = block(t * TILE + r, b);
                    place(bits, out, r, &blk.q);
                    for (i, &x) in blk.s.iter().enumerate() {
                        let at = bits.value_bytes() + 2 * (i * TILE + r);
                        out[at..][..2].copy_from_slice(&f16::from_f32(x).to_le_bytes());
                    }
                }
            }
        }
        Self { bits, n, k, data }
    }

    /// Output rows `n` of the weight.
    pub(crate) fn rows(&self) -> usize {
        self.n
    }

    /// `x [m, k]` (row-major) times the weight's transpose: `[m, n]`, on candle's thread pool.
    pub(crate) fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let acts = Activations::quantize(x, m, self.k);
        let mut out = vec![0f32; m * self.n];
        let chunks = m.div_ceil(ROW_CHUNK);
        let out_ptr = crate::ops::Out(out.as_mut_ptr());
        // Item `t * chunks + c`: tile `t` against rows `c * ROW_CHUNK..`; a worker's consecutive
        // items share a tile.
        candle_core::utils::barrier_pool().execute_chunked(
            self.n.div_ceil(TILE) * chunks,
            |items| {
                for i in items {
                    let (t, c) = (i / chunks, i % chunks);
                    let rows = c * ROW_CHUNK..m.min((c + 1) * ROW_CHUNK);
                    // SAFETY: item (t, c) writes only columns t*16..t*16+16 of rows in its chunk, so
                    // the workers' writes are disjoint, and `out` outlives the pool call.
                    unsafe { self.tile(t, &acts, rows, out_ptr.at(0)) }
                }
            },
        );
        out
    }

    /// Input rows `rows` against tile `t`, written to their columns of `out` (`[m, n]`).
    ///
    /// # Safety
    /// `out` must hold `acts.m * self.n` floats, `rows` must lie within `acts.m`, and no other
    /// thread may write these rows' columns of tile `t`.
    unsafe fn tile(&self, t: usize, acts: &Activations, rows: Range<usize>, out: *mut f32) {
        let kb = self.k / BLOCK;
        let bb = self.bits.block_bytes();
        let tile = &self.data[t * kb * bb..(t + 1) * kb * bb];
        let cols = TILE.min(self.n - t * TILE);
        let mut row = rows.start;
        while row < rows.end {
            let r = ROWS.min(rows.end - row);
            let mut sums = [[0f32; TILE]; ROWS];
            #[cfg(target_arch = "x86_64")]
            kernel::run(self.bits, tile, kb, acts, row, r, &mut sums);
            for (i, s) in sums.iter().take(r).enumerate() {
                // SAFETY: row `row + i` < m and columns t*16..t*16+cols < n lie inside `out`.
                unsafe {
                    let dst = out.add((row + i) * self.n + t * TILE);
                    std::ptr::copy_nonoverlapping(s.as_ptr(), dst, cols);
                }
            }
            row += r;
        }
    }
}

/// Write one row's 32 values into a tile's value bytes: byte `64 j + 4 r + i` holds inputs
/// `4 j + i` (8-bit: `j` < 8; 4-bit: the low nibble, with input `16 + 4 j + i` in the high one, `j` < 4).
fn place(bits: Bits, out: &mut [u8], r: usize, q: &[u8; BLOCK]) {
    match bits {
        Bits::Eight | Bits::Halves => {
            for (c, &v) in q.iter().enumerate() {
                out[64 * (c / 4) + 4 * r + c % 4] = v;
            }
        }
        Bits::Four => {
            for c in 0..16 {
                out[64 * (c / 4) + 4 * r + c % 4] = q[c] | (q[c + 16] << 4);
            }
        }
    }
}

/// Block `b` (of 32 inputs) of one GGUF row, as unsigned values, scale and offset.
fn decode(dtype: GgmlDType, row: &[u8], b: usize) -> Block {
    let h = |bytes: &[u8]| f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
    let nibbles = |qs: &[u8]| -> [u8; BLOCK] {
        std::array::from_fn(|i| if i < 16 { qs[i] & 15 } else { qs[i - 16] >> 4 })
    };
    match dtype {
        GgmlDType::Q4_0 => {
            let p = &row[b * 18..];
            let d = h(p);
            Block {
                s: [d, -8.0 * d],
                q: nibbles(&p[2..18]),
            }
        }
        GgmlDType::Q4_1 => {
            let p = &row[b * 20..];
            Block {
                s: [h(p), h(&p[2..])],
                q: nibbles(&p[4..20]),
            }
        }
        GgmlDType::Q8_0 => {
            let p = &row[b * 34..];
            let d = h(p);
            let q = std::array::from_fn(|i| (p[2 + i] as i8 as i16 + 128) as u8);
            Block {
                s: [d, -128.0 * d],
                q,
            }
        }
        GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
            let (size, off) = if dtype == GgmlDType::Q5_0 {
                (22, 2)
            } else {
                (24, 4)
            };
            let p = &row[b * size..];
            let d = h(p);
            let m = if dtype == GgmlDType::Q5_0 {
                -16.0 * d
            } else {
                h(&p[2..])
            };
            let qh = u32::from_le_bytes([p[off], p[off + 1], p[off + 2], p[off + 3]]);
            let low = nibbles(&p[off + 4..off + 20]);
            let q = std::array::from_fn(|i| low[i] | ((((qh >> i) & 1) as u8) << 4));
            Block { s: [d, m], q }
        }
        GgmlDType::Q4K => {
            // 256 inputs per super-block: 8 sub-blocks of 32, each a 6-bit scale and minimum.
            let p = &row[(b / 8) * 144..];
            let (j, d, dmin) = (b % 8, h(p), h(&p[2..]));
            let (sc, mn) = scale_min_k4(j, &p[4..16]);
            let qs = &p[16 + 32 * (j / 2)..][..32];
            let q = std::array::from_fn(|i| if j % 2 == 0 { qs[i] & 15 } else { qs[i] >> 4 });
            Block {
                s: [d * sc as f32, -dmin * mn as f32],
                q,
            }
        }
        GgmlDType::Q6K => {
            // 256 inputs per super-block: low nibbles (128 bytes), high 2-bit pairs (64), 16 signed
            // scales, f16 d. Each half of 128 holds 4 blocks of 32 (`g`), whose input `l` takes its low
            // nibble from byte `l` (g 0, 2) or `32 + l` (g 1, 3), low (g < 2) or high, and its high
            // bits from bits 2g of byte `l` of its half's 32 `qh` bytes; sub-block scale `l / 16 + 2 g`.
            let p = &row[(b / 8) * 210..];
            let (half, g) = ((b % 8) / 4, b % 4);
            let (ql, qh) = (&p[64 * half..], &p[128 + 32 * half..]);
            let sc = |i: usize| p[192 + 8 * half + i + 2 * g] as i8 as f32;
            let d = h(&p[208..]);
            let q = std::array::from_fn(|l| {
                let byte = ql[l + 32 * (g % 2)];
                let low = if g < 2 { byte & 15 } else { byte >> 4 };
                low | (((qh[l] >> (2 * g)) & 3) << 4)
            });
            Block {
                s: [d * sc(0), d * sc(1)],
                q,
            }
        }
        other => unreachable!("Packed::new admits no {other:?}"),
    }
}

/// Q4_K's 6-bit scale and minimum of sub-block `j` from its 12 packed bytes (ggml's layout).
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Input rows quantised to signed 8 bits per block of 32: `x ≈ d q`, with `d Σ q` of each half
/// block (the weights' offsets need their block's sum, [`Bits::Halves`] each half's).
struct Activations {
    m: usize,
    k: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    halves: Vec<f32>,
}

impl Activations {
    fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        let kb = k / BLOCK;
        let mut q = vec![0i8; m * k];
        let (mut d, mut halves) = (vec![0f32; m * kb], vec![0f32; 2 * m * kb]);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only a `Packed` quantises inputs, and one exists only where `available()` holds;
        // every slice holds whole blocks.
        unsafe {
            kernel::quantize(x, &mut q, &mut d, &mut halves)
        };
        Self { m, k, q, d, halves }
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use super::{Activations, Bits, BLOCK, ROWS, TILE};
    use std::arch::x86_64::*;

    /// Rows `row..row + r` (`r` <= [`ROWS`]) of `acts` against one tile's `kb` blocks.
    pub(super) fn run(
        bits: Bits,
        tile: &[u8],
        kb: usize,
        acts: &Activations,
        row: usize,
        r: usize,
        sums: &mut [[f32; TILE]; ROWS],
    ) {
        assert!(tile.len() >= kb * bits.block_bytes() && row + r <= acts.m && acts.k == kb * BLOCK);
        /// The kernel for `bits` and `r` rows.
        macro_rules! rows {
            ($four:literal, $halves:literal) => {
                match r {
                    1 => blocks::<$four, $halves, 1>,
                    2 => blocks::<$four, $halves, 2>,
                    3 => blocks::<$four, $halves, 3>,
                    _ => blocks::<$four, $halves, 4>,
                }
            };
        }
        let kernel = match bits {
            Bits::Four => rows!(true, false),
            Bits::Eight => rows!(false, false),
            Bits::Halves => rows!(false, true),
        };
        // SAFETY: `Packed::new` builds tiles only where `available()` holds; the bounds are checked
        // above, and the kernels read only `kb` blocks of the tile and of rows `row..row + r`.
        unsafe { kernel(tile, kb, acts, row, sums) }
    }

    /// `x` (whole blocks of 32) to 8-bit values `q` (rounded to nearest, ties to even), the scale `d`
    /// of each block (its largest |x| / 127) and `d Σ q` of each half block.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize(x: &[f32], q: &mut [i8], d: &mut [f32], halves: &mut [f32]) {
        assert!(x.len() == q.len() && x.len() == d.len() * BLOCK && halves.len() == 2 * d.len());
        for (b, d) in d.iter_mut().enumerate() {
            // SAFETY: block `b` of `x` and `q` is in bounds (checked above).
            unsafe {
                let lo = _mm512_loadu_ps(x.as_ptr().add(BLOCK * b));
                let hi = _mm512_loadu_ps(x.as_ptr().add(BLOCK * b + 16));
                let amax =
                    _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
                let scale = amax / 127.0;
                let inv = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
                let qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, inv));
                let qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, inv));
                let out = q.as_mut_ptr().add(BLOCK * b) as *mut __m128i;
                _mm_storeu_si128(out, _mm512_cvtepi32_epi8(qlo));
                _mm_storeu_si128(out.add(1), _mm512_cvtepi32_epi8(qhi));
                *d = scale;
                let (slo, shi) = (_mm512_reduce_add_epi32(qlo), _mm512_reduce_add_epi32(qhi));
                halves[2 * b] = scale * slo as f32;
                halves[2 * b + 1] = scale * shi as f32;
            }
        }
    }

    /// The 4 inputs at `i` of a quantised row, broadcast to every 32-bit lane.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn inputs(q: *const i8, i: usize) -> __m512i {
        // SAFETY: the caller passes an index with 4 bytes of the row after it.
        _mm512_set1_epi32(unsafe { std::ptr::read_unaligned(q.add(i) as *const i32) })
    }

    /// Each of `R` input rows against a tile: per block, two independent `vpdpbusd` chains per row
    /// (inputs 0-15 and 16-31; one chain would be bound by the instruction's latency), then the
    /// block's scales ([`Bits`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn blocks<const FOUR: bool, const HALVES: bool, const R: usize>(
        tile: &[u8],
        kb: usize,
        acts: &Activations,
        row: usize,
        sums: &mut [[f32; TILE]; ROWS],
    ) {
        // SAFETY: `run` checked that the tile holds `kb` blocks and the rows exist.
        unsafe {
            let bits = match (FOUR, HALVES) {
                (true, _) => Bits::Four,
                (false, false) => Bits::Eight,
                (false, true) => Bits::Halves,
            };
            let (bb, vb) = (bits.block_bytes(), bits.value_bytes());
            let nibble = _mm512_set1_epi8(15);
            let xq: [*const i8; R] =
                std::array::from_fn(|i| acts.q.as_ptr().add((row + i) * acts.k));
            let xd: [*const f32; R] = std::array::from_fn(|i| acts.d.as_ptr().add((row + i) * kb));
            let xs: [*const f32; R] =
                std::array::from_fn(|i| acts.halves.as_ptr().add(2 * (row + i) * kb));
            let mut acc = [_mm512_setzero_ps(); R];
            for b in 0..kb {
                let p = tile.as_ptr().add(b * bb);
                let mut lo = [_mm512_setzero_si512(); R];
                let mut hi = [_mm512_setzero_si512(); R];
                let base = b * BLOCK;
                for j in 0..4 {
                    let (vlo, vhi) = if FOUR {
                        let v = _mm512_loadu_si512(p.add(64 * j) as *const _);
                        let high = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibble);
                        (_mm512_and_si512(v, nibble), high)
                    } else {
                        let v0 = _mm512_loadu_si512(p.add(64 * j) as *const _);
                        (v0, _mm512_loadu_si512(p.add(64 * (j + 4)) as *const _))
                    };
                    for i in 0..R {
                        lo[i] = _mm512_dpbusd_epi32(lo[i], vlo, inputs(xq[i], base + 4 * j));
                        hi[i] = _mm512_dpbusd_epi32(hi[i], vhi, inputs(xq[i], base + 16 + 4 * j));
                    }
                }
                let s0 = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(vb) as *const _));
                let s1 = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(vb + 32) as *const _));
                for i in 0..R {
                    let dx = _mm512_set1_ps(*xd[i].add(b));
                    let (h0, h1) = (*xs[i].add(2 * b), *xs[i].add(2 * b + 1));
                    if HALVES {
                        // s_h (dx Σ q qx - 32 dx Σ qx) over each half.
                        let (slo, shi) = (_mm512_cvtepi32_ps(lo[i]), _mm512_cvtepi32_ps(hi[i]));
                        let t0 = _mm512_fmsub_ps(slo, dx, _mm512_set1_ps(32.0 * h0));
                        let t1 = _mm512_fmsub_ps(shi, dx, _mm512_set1_ps(32.0 * h1));
                        acc[i] = _mm512_fmadd_ps(s0, t0, acc[i]);
                        acc[i] = _mm512_fmadd_ps(s1, t1, acc[i]);
                    } else {
                        let s = _mm512_cvtepi32_ps(_mm512_add_epi32(lo[i], hi[i]));
                        acc[i] = _mm512_fmadd_ps(s, _mm512_mul_ps(s0, dx), acc[i]);
                        acc[i] = _mm512_fmadd_ps(s1, _mm512_set1_ps(h0 + h1), acc[i]);
                    }
                }
            }
            for i in 0..R {
                _mm512_storeu_ps(sums[i].as_mut_ptr(), acc[i]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn seeded(n: usize, k: usize, seed: f32) -> Vec<f32> {
        (0..n * k)
            .map(|i| ((i as f32 + 1.0) * (seed + 0.37) * 12.9898).sin() * (1.0 + (i % 7) as f32))
            .collect()
    }

    /// The packed tiles, read back as f32 weights `[n, k]`.
    fn unpack(p: &Packed) -> Vec<f32> {
        let (kb, bb, vb) = (p.k / BLOCK, p.bits.block_bytes(), p.bits.value_bytes());
        let mut w = vec![0f32; p.n * p.k];
        for r in 0..p.n {
            let (t, rr) = (r / TILE, r % TILE);
            for b in 0..kb {
                let blk = &p.data[(t * kb + b) * bb..][..bb];
                let h = |o: usize| f16::from_le_bytes([blk[o], blk[o + 1]]).to_f32();
                let (s0, s1) = (h(vb + 2 * rr), h(vb + 2 * (TILE + rr)));
                for c in 0..BLOCK {
                    let q = match p.bits {
                        Bits::Eight | Bits::Halves => blk[64 * (c / 4) + 4 * rr + c % 4],
                        Bits::Four => {
                            let byte = blk[64 * ((c % 16) / 4) + 4 * rr + c % 4];
                            if c < 16 {
                                byte & 15
                            } else {
                                byte >> 4
                            }
                        }
                    };
                    w[r * p.k + b * BLOCK + c] = match (p.bits, c < 16) {
                        (Bits::Halves, true) => s0 * (q as f32 - 32.0),
                        (Bits::Halves, false) => s1 * (q as f32 - 32.0),
                        _ => s0 * q as f32 + s1,
                    };
                }
            }
        }
        w
    }

    fn quantized(dtype: GgmlDType, n: usize, k: usize) -> (QTensor, Vec<f32>) {
        let w = Tensor::from_vec(seeded(n, k, 1.0), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let dq = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (q, dq)
    }

    /// Repacking keeps every weight of the file: exactly for the block types whose scales are f16
    /// already, within f16 rounding of the sub-block scales for Q4_K and Q6_K.
    #[test]
    fn repacked_tiles_hold_the_files_weights() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI, so nothing is packed");
            return;
        }
        for (dtype, tol) in [
            (GgmlDType::Q4_0, 0.0),
            (GgmlDType::Q4_1, 0.0),
            (GgmlDType::Q5_0, 0.0),
            (GgmlDType::Q5_1, 0.0),
            (GgmlDType::Q8_0, 0.0),
            (GgmlDType::Q4K, 4e-3),
            (GgmlDType::Q6K, 1e-3),
        ] {
            // 37 rows: two whole tiles and a partial one.
            let (q, dq) = quantized(dtype, 37, 512);
            let p = Packed::new(&q).unwrap().expect("packed");
            let w = unpack(&p);
            let worst = w
                .iter()
                .zip(&dq)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let scale = dq.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert!(worst <= tol * scale, "{dtype:?}: worst {worst} of {scale}");
        }
    }

    /// The kernels against f32 products with the file's dequantised weights (candle's dequantiser):
    /// the only difference is the inputs' 8-bit rounding, at most 1/254 of each block's largest input.
    #[test]
    fn packed_products_match_the_dequantised_weights() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI, so nothing is packed");
            return;
        }
        for dtype in [
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::Q5_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let (n, k) = (40, 768);
            let (q, dq) = quantized(dtype, n, k);
            let p = Packed::new(&q).unwrap().unwrap();
            // 70 rows: two row chunks of a tile, the second partial.
            for m in [1, 3, 4, 6, 9, 70] {
                let x = seeded(m, k, 2.0 + m as f32);
                let y = p.matmul(&x, m);
                assert_eq!(y.len(), m * n);
                for i in 0..m {
                    let xi = &x[i * k..(i + 1) * k];
                    for c in 0..n {
                        let wc = &dq[c * k..(c + 1) * k];
                        let exact: f32 = xi.iter().zip(wc).map(|(a, b)| a * b).sum();
                        // Bound: Σ |w| |x - x̂| with |x - x̂| <= dx / 2 per block.
                        let bound: f32 = xi
                            .chunks(BLOCK)
                            .zip(wc.chunks(BLOCK))
                            .map(|(xs, ws)| {
                                let dx = xs.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                                ws.iter().map(|w| w.abs()).sum::<f32>() * dx / 2.0
                            })
                            .sum();
                        let got = y[i * n + c];
                        assert!(
                            (got - exact).abs() <= bound * 1.01 + 1e-3,
                            "{dtype:?} m {m} row {i} col {c}: {got} vs {exact} (bound {bound})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn unsupported_block_types_are_left_to_candle() {
        let (q, _) = quantized(GgmlDType::Q3K, 16, 256);
        assert!(Packed::new(&q).unwrap().is_none());
    }
}
