//! The decoder's shape: a cascade of `(N, H, W)` stages and one kernel size. Parameter counts are
//! computed from the shape alone, so the paper's 1.1 B configuration can be checked without allocating it.

use crate::{DecodeError, Result};
use serde::{Deserialize, Serialize};

/// `(N, H, W)`: N 2-D maps of H x W (prompts x tokens x hidden at the input, tokens x (r+2) x (cw+2) at
/// the output).
pub type Stage = [usize; 3];

/// The CPU default condition: 32 prompts of at most 32 word pieces, MiniLM's 384 hidden units.
pub const CPU_DEFAULT_INPUT: Stage = [32, 32, 384];

/// The CPU default's N before the last layer: the number of maps every output token is mixed from.
/// The largest that keeps generation under 1 s on the 2-core machine. It fits held-out checkpoints
/// better than 64 maps, and over the 8 leave-one-out targets its adapters score the same within noise
/// (results/generator/README.md: 0.84 s per adapter, 72% of the mean checkpoint's loss).
pub const CPU_DEFAULT_HIDDEN: usize = 128;

/// How the decoder's last stage is made from the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Head {
    /// The paper's: one more hyper-convolutional layer, every output token mixed from the previous
    /// stage's N maps by `k x k` kernels.
    #[default]
    Conv,
    /// `k` learned whole-output tensors mixed by `k` coefficients read from the previous stage
    /// ([`BasisHead`](crate::BasisHead)).
    Basis { k: usize },
}

impl Head {
    pub fn is_conv(&self) -> bool {
        *self == Head::Conv
    }
}

/// A cascade of hyper-convolutional layers, one between each pair of consecutive stages (the last
/// pair: the [`Head`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecoderConfig {
    pub stages: Vec<Stage>,
    /// Square kernel of every conv; odd, so 'same' padding is symmetric.
    pub kernel: usize,
    /// Absent in decoders saved before the setting existed, which are all the paper's; not written
    /// for the paper's, so their files stay as they were.
    #[serde(default, skip_serializing_if = "Head::is_conv")]
    pub head: Head,
}

impl DecoderConfig {
    /// The paper's common-sense decoder (Qwen2.5-0.5B, rank 8, 128 prompts): 8 layers, kernel 9,
    /// 1,113,203,220 parameters.
    pub fn paper_common_sense() -> Self {
        Self {
            stages: vec![
                [128, 384, 384],
                [128, 200, 300],
                [128, 100, 256],
                [256, 50, 200],
                [512, 50, 200],
                [1024, 25, 200],
                [1024, 10, 200],
                [2048, 10, 200],
                [4296, 10, 130],
            ],
            kernel: 9,
            head: Head::Conv,
        }
    }

    /// The CPU default: kernel 3 and three layers that shrink H and W geometrically from the input to the
    /// output while N grows geometrically from the prompt count to `hidden_n` and jumps to the token
    /// count only in the last layer, whose N-mixing conv (`H' W' N_w hidden_n k^2` multiply-adds) is the
    /// largest single term. Meant for [`CPU_DEFAULT_INPUT`]; timings in results/bench/README.md.
    pub fn cpu_default(input: Stage, output: Stage) -> Self {
        Self::cpu(input, output, CPU_DEFAULT_HIDDEN)
    }

    /// The CPU default's shape with `hidden` maps before the last layer: the decoder's capacity to
    /// emit distinct per-token patterns grows with it (and the last layer's cost linearly).
    pub fn cpu(input: Stage, output: Stage, hidden: usize) -> Self {
        Self::geometric(input, output, 3, hidden, 3)
    }

    /// `depth` layers from `input` to `output`: H and W interpolated geometrically over all layers, N
    /// geometrically from the input to `hidden_n` over the first `depth - 1`, then to the output.
    pub fn geometric(
        input: Stage,
        output: Stage,
        depth: usize,
        hidden_n: usize,
        kernel: usize,
    ) -> Self {
        let lerp = |a: usize, b: usize, t: f64| {
            ((a as f64).ln() * (1.0 - t) + (b as f64).ln() * t)
                .exp()
                .round()
                .max(1.0) as usize
        };
        let mut stages = vec![input];
        for i in 1..depth {
            let t = i as f64 / depth as f64;
            let tn = i as f64 / (depth - 1) as f64;
            stages.push([
                lerp(input[0], hidden_n, tn),
                lerp(input[1], output[1], t),
                lerp(input[2], output[2], t),
            ]);
        }
        stages.push(output);
        Self {
            stages,
            kernel,
            head: Head::Conv,
        }
    }

    /// The same stages with another last layer.
    pub fn with_head(self, head: Head) -> Self {
        Self { head, ..self }
    }

    /// Check the config can be built.
    pub fn validate(&self) -> Result<()> {
        if self.stages.len() < 2 {
            return Err(DecodeError::Config(
                "at least two stages (input and output) are needed".into(),
            ));
        }
        if self.kernel == 0 || self.kernel.is_multiple_of(2) {
            return Err(DecodeError::Config(format!(
                "kernel {} must be odd so that 'same' padding is symmetric",
                self.kernel
            )));
        }
        if let Some(s) = self.stages.iter().find(|s| s.contains(&0)) {
            return Err(DecodeError::Config(format!("stage {s:?} has a zero size")));
        }
        if self.head == (Head::Basis { k: 0 }) {
            return Err(DecodeError::Config(
                "a basis head needs at least one direction (k > 0)".into(),
            ));
        }
        Ok(())
    }

    pub fn input(&self) -> Stage {
        self.stages[0]
    }

    pub fn output(&self) -> Stage {
        *self.stages.last().expect("validated: at least two stages")
    }

    /// Parameters of the layer from `a` to `b`: LayerNorm affine (2 H W), four axis convs, the [H', W']
    /// bias, and the N-mixing conv with its bias.
    pub fn layer_parameters(a: Stage, b: Stage, kernel: usize) -> usize {
        let k2 = kernel * kernel;
        let ([n, h, w], [n2, h2, w2]) = (a, b);
        2 * h * w + 2 * (w * w2 + h * h2) * k2 + h2 * w2 + n * n2 * k2 + n2
    }

    /// The stage before the output: what the last layer (or the basis head) reads.
    pub fn last_input(&self) -> Stage {
        self.stages[self.stages.len() - 2]
    }

    /// The stage pairs made by hyper-convolutional layers: all of them, or all but the last with a
    /// basis head.
    pub fn conv_layers(&self) -> std::slice::Windows<'_, Stage> {
        let n = match self.head {
            Head::Conv => self.stages.len(),
            Head::Basis { .. } => self.stages.len() - 1,
        };
        self.stages[..n].windows(2)
    }

    /// Total parameter count, computed from the shapes only.
    pub fn num_parameters(&self) -> usize {
        let head = match self.head {
            Head::Conv => 0,
            Head::Basis { k } => {
                let [n, h, _] = self.last_input();
                let out: usize = self.output().iter().product();
                k * n * h + k + (k + 1) * out
            }
        };
        self.conv_layers()
            .map(|p| Self::layer_parameters(p[0], p[1], self.kernel))
            .sum::<usize>()
            + head
    }

    /// Multiply-adds of one forward pass for one sample.
    pub fn forward_macs(&self) -> usize {
        let k2 = self.kernel * self.kernel;
        let head = match self.head {
            Head::Conv => 0,
            Head::Basis { k } => {
                let [n, h, _] = self.last_input();
                k * (n * h + self.output().iter().product::<usize>())
            }
        };
        head + self
            .conv_layers()
            .map(|p| {
                let ([n, h, w], [n2, h2, w2]) = (p[0], p[1]);
                // path 1: W->W' over (H, N), H->H' over (N, W'); path 2: H->H' over (N, W), W->W' over (H', N)
                let axis =
                    (h * n * w * w2 + n * w2 * h * h2 + n * w * h * h2 + h2 * n * w * w2) * k2;
                axis + h2 * w2 * n * n2 * k2
            })
            .sum::<usize>()
    }
}
