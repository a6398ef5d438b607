//! Which token holds which piece of which matrix: derived from the base model's config, the LoRA rank and
//! its targets alone, so a generator can be built before any checkpoint exists.

use dnd_llm::{LoraConfig, ModelConfig, Target};

/// The order of modules within a layer, as docs/method.md step 4 lists them. (The official code follows the
/// PEFT state-dict order, gate before up; the order only has to be fixed, not any particular one.)
pub const MODULE_ORDER: [Target; 7] = [
    Target::Q,
    Target::K,
    Target::V,
    Target::O,
    Target::Up,
    Target::Gate,
    Target::Down,
];

/// The two factors of a LoRA module, tokenized as A `[r, in]` and B transposed `[r, out]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Factor {
    A,
    B,
}

/// What one token holds: columns `start .. start + width` of one factor of one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenInfo {
    pub layer: usize,
    pub target: Target,
    pub factor: Factor,
    /// Column offset of this chunk along the factor's long axis.
    pub start: usize,
    /// Real columns in this chunk (< chunk width only for a module's last chunk).
    pub width: usize,
}

/// Every token of an adapter in order: layer, then [`MODULE_ORDER`], then A before B, then chunk.
pub(crate) fn plan(model: &ModelConfig, lora: &LoraConfig, cw: usize) -> Vec<TokenInfo> {
    let mut out = Vec::new();
    for layer in 0..model.num_layers {
        for target in MODULE_ORDER
            .into_iter()
            .filter(|t| lora.targets.contains(t))
        {
            let (inp, outp) = model.module_shape(target);
            for (factor, len) in [(Factor::A, inp), (Factor::B, outp)] {
                for start in (0..len).step_by(cw) {
                    out.push(TokenInfo {
                        layer,
                        target,
                        factor,
                        start,
                        width: cw.min(len - start),
                    });
                }
            }
        }
    }
    out
}

/// The default chunk width: the largest divisor of the gcd of every tokenized length (in and out of each
/// target) that is at most 256. Chunks then tile every factor exactly (no padding), and the rule gives the
/// paper's 128 for Qwen2.5-0.5B (gcd of 896, 128, 4864) and 192 for SmolLM2-135M (gcd of 576, 192, 1536).
pub fn default_chunk_width(model: &ModelConfig, targets: &[Target]) -> usize {
    let g = targets
        .iter()
        .flat_map(|&t| {
            let (i, o) = model.module_shape(t);
            [i, o]
        })
        .fold(0, gcd);
    (1..=g.min(256)).rev().find(|d| g % d == 0).unwrap_or(1)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
