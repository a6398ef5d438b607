//! The machine's f32 matmul ceiling at the shapes a model's forward pass multiplies, and each
//! measure's share of it. A tokens/s figure says little across machines (one of the project's machines
//! reaches twice another's matmul rate); its share of what the same cores multiply at the same shapes
//! says how much of the machine a kernel uses, and how much any implementation could still gain.

use crate::Result;
use candle_core::{Device, Tensor};
use dnd_llm::{ModelConfig, Target};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// One product `x [m, k] · W^T` with `W [n, k]`, and how often a forward pass runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// Times per forward pass (once per layer for a projection).
    pub per_forward: usize,
}

impl Shape {
    pub fn flop(&self) -> f64 {
        2.0 * (self.m * self.k * self.n * self.per_forward) as f64
    }
}

/// A shape and the rate dnd's projection product (OpenBLAS where installed, else the `gemm` crate)
/// reached on it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Rate {
    #[serde(flatten)]
    pub shape: Shape,
    pub gflop_s: f64,
}

/// `ceiling` in a results file.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ceiling {
    /// dnd's matmul at 2048^3, the size usually quoted for a machine's peak.
    pub square_2048_gflop_s: f64,
    /// dnd's matmul at each projection shape of the benchmark's forward pass.
    pub shapes: Vec<Rate>,
    /// The projections' FLOPs per forward pass over the time they take at the rates above: the
    /// forward pass's matmul ceiling with this library.
    pub dnd_forward_gflop_s: f64,
    /// The same from the reference's matmul (PyTorch) at the same shapes, when it ran.
    pub reference_forward_gflop_s: Option<f64>,
    /// The higher of the two: what every share is taken of.
    pub gflop_s: f64,
}

impl Ceiling {
    /// Fold the reference's rate in: the ceiling is the best either library reached.
    pub fn with_reference(mut self, reference: Option<f64>) -> Self {
        self.reference_forward_gflop_s = reference;
        self.gflop_s = reference.map_or(self.dnd_forward_gflop_s, |r| {
            r.max(self.dnd_forward_gflop_s)
        });
        self
    }

    /// The share of the ceiling a measure reaches when it does `flop_per_token` useful FLOPs per
    /// token at `tok_s`.
    pub fn share(&self, flop_per_token: f64, tok_s: f64) -> f64 {
        flop_per_token * tok_s / (self.gflop_s * 1e9)
    }
}

/// The seven projections of every layer for `tokens` rows, plus the vocabulary head when
/// `head_rows` (rows whose logits are computed) is non-zero.
pub fn model_shapes(cfg: &ModelConfig, tokens: usize, head_rows: usize) -> Vec<Shape> {
    let mut shapes: Vec<Shape> = Vec::new();
    for t in Target::ALL {
        let (k, n) = cfg.module_shape(t);
        match shapes.iter_mut().find(|s| (s.k, s.n) == (k, n)) {
            Some(s) => s.per_forward += cfg.num_layers,
            None => shapes.push(Shape {
                m: tokens,
                k,
                n,
                per_forward: cfg.num_layers,
            }),
        }
    }
    if head_rows > 0 {
        shapes.push(Shape {
            m: head_rows,
            k: cfg.hidden_size,
            n: cfg.vocab_size,
            per_forward: 1,
        });
    }
    shapes
}

/// Useful FLOPs per token of the seven projections of every layer (`2 k n` each).
pub fn projection_flop_per_token(cfg: &ModelConfig) -> f64 {
    let per_layer: f64 = Target::ALL
        .iter()
        .map(|&t| {
            let (k, n) = cfg.module_shape(t);
            2.0 * (k * n) as f64
        })
        .sum();
    cfg.num_layers as f64 * per_layer
}

/// FLOPs per token of attention over `keys` keys on average (`QK^T` and `PV`, every layer).
pub fn attention_flop_per_token(cfg: &ModelConfig, keys: f64) -> f64 {
    cfg.num_layers as f64 * 2.0 * 2.0 * (cfg.num_heads * cfg.head_dim) as f64 * keys
}

/// FLOPs per token of the vocabulary head.
pub fn head_flop_per_token(cfg: &ModelConfig) -> f64 {
    2.0 * (cfg.hidden_size * cfg.vocab_size) as f64
}

/// The useful FLOPs per token of a forward pass over `seq` tokens per row, without the head:
/// projections and causal attention (a token attends to `(seq + 1) / 2` keys on average).
/// Element-wise work is not counted: a kernel is judged on its products.
pub fn forward_flop_per_token(cfg: &ModelConfig, seq: usize) -> f64 {
    projection_flop_per_token(cfg) + attention_flop_per_token(cfg, (seq as f64 + 1.0) / 2.0)
}

/// Measure dnd's matmul on `shapes` (each for about `seconds`) and at 2048^3.
pub fn measure(shapes: &[Shape], seconds: f64) -> Result<Ceiling> {
    let square = rate(
        Shape {
            m: 2048,
            k: 2048,
            n: 2048,
            per_forward: 1,
        },
        seconds,
    )?;
    let rates = shapes
        .iter()
        .map(|&s| rate(s, seconds).map(|gflop_s| Rate { shape: s, gflop_s }))
        .collect::<Result<Vec<_>>>()?;
    let dnd = forward_rate(&rates);
    Ok(Ceiling {
        square_2048_gflop_s: square,
        shapes: rates,
        dnd_forward_gflop_s: dnd,
        reference_forward_gflop_s: None,
        gflop_s: dnd,
    })
}

/// Total FLOPs over total time of a forward pass's products at the measured rates.
pub fn forward_rate(rates: &[Rate]) -> f64 {
    let flop: f64 = rates.iter().map(|r| r.shape.flop()).sum();
    let secs: f64 = rates
        .iter()
        .map(|r| r.shape.flop() / (r.gflop_s * 1e9))
        .sum();
    flop / secs / 1e9
}

/// GFLOP/s of `x W^T` at one shape through the library the model's projections use
/// ([`dnd_llm::blas::matmul_nt`]), repeated for about `seconds` after a warm-up product.
fn rate(s: Shape, seconds: f64) -> Result<f64> {
    let x = Tensor::randn(0f32, 1.0, (s.m, s.k), &Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let w = Tensor::randn(0f32, 1.0, (s.n, s.k), &Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    std::hint::black_box(dnd_llm::blas::matmul_nt(&x, &w, s.k));
    let t = Instant::now();
    let mut reps = 0usize;
    while reps == 0 || t.elapsed().as_secs_f64() < seconds {
        std::hint::black_box(dnd_llm::blas::matmul_nt(&x, &w, s.k));
        reps += 1;
    }
    let per = t.elapsed().as_secs_f64() / reps as f64;
    Ok(2.0 * (s.m * s.k * s.n) as f64 / per / 1e9)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn smollm2() -> ModelConfig {
        dnd_testkit::smollm2_config()
    }

    #[test]
    fn shapes_group_equal_projections_and_count_their_layers() {
        let s = model_shapes(&smollm2(), 1024, 0);
        // q and o (576x576), k and v (576->192), gate and up (576->1536), down (1536->576).
        let find = |k, n| s.iter().find(|x| (x.k, x.n) == (k, n)).unwrap().per_forward;
        assert_eq!(s.len(), 4);
        assert_eq!(find(576, 576), 60);
        assert_eq!(find(576, 192), 60);
        assert_eq!(find(576, 1536), 60);
        assert_eq!(find(1536, 576), 30);
        let flop: f64 = s.iter().map(Shape::flop).sum();
        // 30 layers x (2*576*576*2 + 2*576*192*2 + 2*576*1536*3) FLOPs per token, 1024 tokens.
        let per_token =
            30.0 * 2.0 * (576.0 * 576.0 * 2.0 + 576.0 * 192.0 * 2.0 + 576.0 * 1536.0 * 3.0);
        assert!((flop / 1024.0 - per_token).abs() < 1.0);
        let with_head = model_shapes(&smollm2(), 1024, 8);
        assert_eq!(with_head.last().unwrap().n, 49152);
        assert_eq!(with_head.last().unwrap().m, 8);
    }

    #[test]
    fn forward_flops_add_causal_attention_to_the_projections() {
        let cfg = smollm2();
        let proj = 30.0 * 2.0 * (576.0 * 576.0 * 2.0 + 576.0 * 192.0 * 2.0 + 576.0 * 1536.0 * 3.0);
        // Per token, QK^T and PV over (seq + 1) / 2 keys on average, 9 heads of 64.
        let attn = 30.0 * 2.0 * 2.0 * 576.0 * 64.5;
        assert!((forward_flop_per_token(&cfg, 128) - (proj + attn)).abs() < 1e-3);
    }

    #[test]
    fn the_forward_rate_weighs_shapes_by_their_time_and_shares_divide_by_the_best_library() {
        let r = |k, gflop_s| Rate {
            shape: Shape {
                m: 1,
                k,
                n: 1,
                per_forward: 1,
            },
            gflop_s,
        };
        // 2 and 6 FLOPs at 100 and 300 GFLOP/s take 0.02 and 0.02 ns: 8 FLOPs in 0.04 ns.
        assert!((forward_rate(&[r(1, 100.0), r(3, 300.0)]) - 200.0).abs() < 1e-9);
        let c = Ceiling {
            square_2048_gflop_s: 0.0,
            shapes: vec![],
            dnd_forward_gflop_s: 200.0,
            reference_forward_gflop_s: None,
            gflop_s: 200.0,
        };
        let c = c.with_reference(Some(250.0));
        assert_eq!(c.gflop_s, 250.0);
        assert!((c.share(1e9, 125.0) - 0.5).abs() < 1e-12);
        assert_eq!(c.with_reference(Some(100.0)).gflop_s, 200.0);
    }

    #[test]
    fn measured_rates_are_positive_and_finite() {
        let c = measure(
            &[Shape {
                m: 8,
                k: 16,
                n: 4,
                per_forward: 2,
            }],
            0.0,
        )
        .unwrap();
        assert!(c.square_2048_gflop_s.is_finite() && c.square_2048_gflop_s > 0.0);
        assert_eq!(c.shapes.len(), 1);
        assert!(c.shapes[0].gflop_s > 0.0 && c.dnd_forward_gflop_s > 0.0);
    }
}
