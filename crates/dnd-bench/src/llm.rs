//! `dnd bench llm`: the base model's kernels side by side with PyTorch (+PEFT, transformers'
//! `generate`) and llama.cpp on the same model file, each as tokens/s and as a share of the machine's
//! measured matmul ceiling (`results/bench/llm-<model>.json`).
//!
//! Measures (the same work on every side):
//! - `forward`: hidden states of a `batch x seq` batch (no head);
//! - `lora_train`: forward, backward and AdamW with rank-8 LoRA on all seven projections and the
//!   causal-LM loss on every token (both sides compute every logit);
//! - `decode_1`: greedy decoding of `decode_new` tokens after a `decode_prompt`-token prompt, one
//!   sequence, KV cache, no stop (prompt processing included);
//! - `decode_batch`: the same for `decode_batch` sequences at once.
//!
//! The machine's load drifts, so the run is split into rounds of (PyTorch, llama.cpp, dnd); each ratio
//! is taken within a round and the median over rounds is reported, with its range.

use crate::ceiling::{self, Ceiling};
use crate::stats::{median, median_time};
use crate::{table, Reference, Result};
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use dnd_llm::train::{lm_loss, LmBatch};
use dnd_llm::{Lora, LoraConfig, ModelConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

const TORCH_SCRIPT: &str = "bench_torch.py";
const LLAMA_CPP_SCRIPT: &str = "bench_llamacpp.py";

/// The measures, in table order. `_quantized`: decoding (prompt included) with the GGUF's
/// quantised blocks kept for the untracked products ([`dnd_llm::Llm::quantized_model`]), compared
/// with the references' plain decoding (llama.cpp always decodes on its quantised blocks).
pub const MEASURES: [&str; 6] = [
    "forward",
    "lora_train",
    "decode_1",
    "decode_batch",
    "decode_1_quantized",
    "decode_batch_quantized",
];

/// The reference measure a dnd measure is compared with.
fn reference_measure(name: &str) -> &str {
    name.strip_suffix("_quantized").unwrap_or(name)
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct LlmBenchConfig {
    /// The base model (a GGUF file or a Hugging Face directory); the references load the same file.
    pub model: PathBuf,
    pub batch: usize,
    pub seq: usize,
    /// Timed steps of `forward` and `lora_train` per round (after one warm-up step).
    pub steps: usize,
    pub rounds: usize,
    pub decode: DecodeShape,
    /// Seconds per shape when measuring the matmul ceiling.
    pub ceiling_seconds: f64,
    /// Without it only dnd is measured.
    pub reference: Option<Reference>,
    /// The measures to run (names of [`MEASURES`]); empty: all.
    pub only: Vec<String>,
}

impl LlmBenchConfig {
    fn wants(&self, measure: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|m| m == measure)
    }
}

/// The decoding measures' shape.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct DecodeShape {
    pub prompt: usize,
    pub new_tokens: usize,
    pub batch: usize,
}

/// `results/bench/llm-<model>.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LlmBench {
    /// Always `llm`.
    pub bench: String,
    pub model: String,
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
    pub rounds: usize,
    pub decode: DecodeShape,
    pub threads: usize,
    /// The library under dnd's projections (`openblas (<kernels>)` or `gemm`).
    pub blas: String,
    pub loadavg_1m_before_after: [Option<f64>; 2],
    pub ceiling: Ceiling,
    /// Useful FLOPs per token of each measure (products only), for the shares.
    pub flop_per_token: BTreeMap<String, f64>,
    /// Per measure: medians over the rounds, ratios and shares.
    pub measures: Vec<Measure>,
    pub per_round: Vec<Round>,
}

/// One measure over all rounds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Measure {
    pub name: String,
    /// Median tokens/s over the rounds.
    pub dnd_tok_s: f64,
    /// `dnd_tok_s` x FLOPs per token over the ceiling.
    pub dnd_share: f64,
    /// Per reference that measured it (`torch`, `llama_cpp`).
    pub references: BTreeMap<String, Versus>,
}

/// A reference's side of a measure.
#[derive(Debug, Serialize, Deserialize)]
pub struct Versus {
    pub tok_s: f64,
    pub share: f64,
    /// Median over rounds of dnd / reference within the round.
    pub ratio: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
}

/// Tokens/s of every side in one round (a side's measures by name).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Round {
    pub dnd: BTreeMap<String, f64>,
    pub references: BTreeMap<String, BTreeMap<String, f64>>,
    /// Whatever else each reference script recorded (versions, load times, peak RSS), as written.
    pub reference_details: BTreeMap<String, Map<String, Value>>,
    pub dnd_peak_rss_mb: f64,
}

/// What a reference script prints: tokens/s per measure it ran, its matmul rate at the same shapes
/// where it measured one, and anything else.
#[derive(Debug, Deserialize)]
struct ScriptOutput {
    tok_s: BTreeMap<String, f64>,
    #[serde(default)]
    matmul_forward_gflop_s: Option<f64>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// Run every round, then summarise.
pub fn run(config: &LlmBenchConfig) -> Result<LlmBench> {
    if let Some(r) = &config.reference {
        r.script(TORCH_SCRIPT)?;
    }
    let load_before = crate::loadavg();
    let llm = crate::load_model(&config.model)?;
    let cfg = llm.model.config().clone();
    let shapes = ceiling::model_shapes(&cfg, config.batch * config.seq, 0);
    let quantized = llm.quantized_model()?;
    if let Some((_, n)) = &quantized {
        tracing::info!("{n} weights with quantised blocks for the _quantized measures");
    }
    tracing::info!("measuring the matmul ceiling at the model's shapes");
    let mut ceiling = ceiling::measure(&shapes, config.ceiling_seconds)?;
    let mut rounds = Vec::new();
    let mut reference_rates = Vec::new();
    for r in 0..config.rounds {
        tracing::info!("round {} of {}", r + 1, config.rounds);
        // The references first: dnd's allocator keeps its peak (mimalloc, purging off), which with
        // PyTorch's on top ran a 24 GB machine out of memory on Qwen2.5-0.5B.
        let mut round = Round::default();
        for (name, script) in [("torch", TORCH_SCRIPT), ("llama_cpp", LLAMA_CPP_SCRIPT)] {
            let Some(reference) = &config.reference else {
                continue;
            };
            match reference.run::<ScriptOutput>(script, &reference_args(config, &shapes)) {
                Ok(out) => {
                    reference_rates.extend(out.matmul_forward_gflop_s);
                    round.references.insert(name.into(), out.tok_s);
                    round.reference_details.insert(name.into(), out.other);
                }
                // PyTorch must run; llama.cpp is optional in the reference environment.
                Err(e) if name == "llama_cpp" => tracing::warn!("llama.cpp reference skipped: {e}"),
                Err(e) => return Err(e),
            }
        }
        round.dnd = measure_dnd(&llm, quantized.as_ref().map(|q| &q.0), config)?;
        round.dnd_peak_rss_mb = dnd_io::peak_rss_mb();
        rounds.push(round);
    }
    let reference_rate = (!reference_rates.is_empty()).then(|| median(&reference_rates));
    ceiling = ceiling.with_reference(reference_rate);
    let flop_per_token = flop_per_token(&cfg, config);
    let measures = summarise(&rounds, &flop_per_token, &ceiling);
    Ok(LlmBench {
        bench: "llm".into(),
        model: config.model.display().to_string(),
        batch: config.batch,
        seq: config.seq,
        steps: config.steps,
        rounds: config.rounds,
        decode: config.decode,
        threads: crate::threads(),
        blas: dnd_llm::blas::backend(),
        loadavg_1m_before_after: [load_before, crate::loadavg()],
        ceiling,
        flop_per_token,
        measures,
        per_round: rounds,
    })
}

/// Useful FLOPs per token of each measure. Training: the forward pass with the head at every
/// position, and a backward pass of the same size (input gradients only: the base weights are
/// frozen, the rank-8 adapter's products are negligible). Decoding: the projections, attention over
/// the mean context and the head, per generated token.
pub fn flop_per_token(cfg: &ModelConfig, config: &LlmBenchConfig) -> BTreeMap<String, f64> {
    let forward = ceiling::forward_flop_per_token(cfg, config.seq);
    let head = ceiling::head_flop_per_token(cfg);
    let d = config.decode;
    let keys = d.prompt as f64 + (d.new_tokens as f64 + 1.0) / 2.0;
    let decode = ceiling::projection_flop_per_token(cfg)
        + ceiling::attention_flop_per_token(cfg, keys)
        + head;
    BTreeMap::from([
        ("forward".to_string(), forward),
        ("lora_train".to_string(), 2.0 * (forward + head)),
        ("decode_1".to_string(), decode),
        ("decode_batch".to_string(), decode),
        ("decode_1_quantized".to_string(), decode),
        ("decode_batch_quantized".to_string(), decode),
    ])
}

/// Medians, per-round ratios and shares of every measure dnd ran.
fn summarise(
    rounds: &[Round],
    flop_per_token: &BTreeMap<String, f64>,
    ceiling: &Ceiling,
) -> Vec<Measure> {
    let share = |name: &str, tok_s: f64| ceiling.share(flop_per_token[name], tok_s);
    MEASURES
        .iter()
        .filter_map(|&name| {
            let dnd: Vec<f64> = rounds
                .iter()
                .filter_map(|r| r.dnd.get(name).copied())
                .collect();
            if dnd.is_empty() {
                return None;
            }
            let dnd_tok_s = median(&dnd);
            let mut references = BTreeMap::new();
            let sides: std::collections::BTreeSet<&String> =
                rounds.iter().flat_map(|r| r.references.keys()).collect();
            for side in sides {
                let pairs: Vec<(f64, f64)> = rounds
                    .iter()
                    .filter_map(|r| {
                        let reference = r.references.get(side)?.get(reference_measure(name))?;
                        Some((*r.dnd.get(name)?, *reference))
                    })
                    .filter(|&(_, t)| t > 0.0)
                    .collect();
                if pairs.is_empty() {
                    continue;
                }
                let tok_s = median(&pairs.iter().map(|p| p.1).collect::<Vec<_>>());
                let ratios: Vec<f64> = pairs.iter().map(|(d, t)| d / t).collect();
                references.insert(
                    side.clone(),
                    Versus {
                        tok_s,
                        share: share(name, tok_s),
                        ratio: median(&ratios),
                        ratio_min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
                        ratio_max: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    },
                );
            }
            Some(Measure {
                name: name.into(),
                dnd_tok_s,
                dnd_share: share(name, dnd_tok_s),
                references,
            })
        })
        .collect()
}

/// One round of dnd's measures, in tokens/s.
fn measure_dnd(
    llm: &dnd_llm::Llm,
    quantized: Option<&dnd_llm::Transformer>,
    config: &LlmBenchConfig,
) -> Result<BTreeMap<String, f64>> {
    let model = &llm.model;
    let ntok = (config.batch * config.seq) as f64;
    let ids = crate::fixed_ids(config.batch * config.seq, model.config().vocab_size);
    let ids_t = Tensor::from_vec(ids.clone(), (config.batch, config.seq), &Device::Cpu)?;
    let d = config.decode;
    let mut out = BTreeMap::new();
    for &name in MEASURES.iter().filter(|m| config.wants(m)) {
        tracing::info!("dnd: {name}");
        let tok_s = match name {
            "forward" => {
                let (forward_s, _) = median_time(config.steps, || {
                    model.hidden(&ids_t, None, None)?;
                    Ok(())
                })?;
                ntok / forward_s
            }
            "lora_train" => ntok / lora_train(llm, &ids, config)?,
            "decode_1" => decode(model, d, 1)?,
            "decode_batch" => decode(model, d, d.batch)?,
            _ => {
                let Some(q) = quantized else { continue };
                let batch = if name == "decode_1_quantized" {
                    1
                } else {
                    d.batch
                };
                decode(q, d, batch)?
            }
        };
        out.insert(name.to_string(), tok_s);
    }
    Ok(out)
}

/// Median seconds of a LoRA training step (the paper's LoRA, causal-LM loss on every token, AdamW at
/// 1e-4, as `bench_torch.py` trains).
fn lora_train(llm: &dnd_llm::Llm, ids: &[u32], config: &LlmBenchConfig) -> Result<f64> {
    let model = &llm.model;
    let lora = Lora::init(
        LoraConfig::paper_default(),
        model.config(),
        0,
        model.dtype(),
    )?;
    let (lora, vars) = lora.to_vars()?;
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: 1e-4,
            ..Default::default()
        },
    )?;
    let seqs: Vec<(Vec<u32>, Vec<bool>)> = ids
        .chunks(config.seq)
        .map(|s| (s.to_vec(), vec![true; s.len()]))
        .collect();
    let batch = LmBatch::new(&seqs, 0, &Device::Cpu)?;
    let (train_s, _) = median_time(config.steps, || {
        let loss = lm_loss(model, Some(&lora), &batch)?;
        opt.backward_step(&loss)?;
        Ok(())
    })?;
    Ok(train_s)
}

/// Generated tokens/s of greedy decoding for `batch` prompts of fixed ids (each row its own ids),
/// after a short warm-up generation.
fn decode(model: &dnd_llm::Transformer, d: DecodeShape, batch: usize) -> Result<f64> {
    let ids = crate::fixed_ids(batch * d.prompt, model.config().vocab_size);
    let prompts: Vec<Vec<u32>> = ids.chunks(d.prompt).map(<[u32]>::to_vec).collect();
    let never = |_: usize, _: &[u32]| false;
    dnd_llm::score::generate_greedy_batch(model, None, &prompts, 4, &[], &never)?;
    let t = Instant::now();
    let out =
        dnd_llm::score::generate_greedy_batch(model, None, &prompts, d.new_tokens, &[], &never)?;
    let generated: usize = out.iter().map(Vec::len).sum();
    Ok(generated as f64 / t.elapsed().as_secs_f64())
}

/// The reference scripts' arguments: the same shapes, and the matmul shapes to rate.
fn reference_args(config: &LlmBenchConfig, shapes: &[ceiling::Shape]) -> Vec<String> {
    let mut v = vec!["--model".to_string(), config.model.display().to_string()];
    let d = config.decode;
    for (k, x) in [
        ("--batch", config.batch),
        ("--seq", config.seq),
        ("--steps", config.steps),
        ("--decode-prompt", d.prompt),
        ("--decode-new", d.new_tokens),
        ("--decode-batch", d.batch),
        ("--threads", crate::threads()),
    ] {
        v.extend([k.to_string(), x.to_string()]);
    }
    let shapes: Vec<String> = shapes
        .iter()
        .map(|s| format!("{}x{}x{}x{}", s.m, s.k, s.n, s.per_forward))
        .collect();
    v.extend(["--matmul-shapes".to_string(), shapes.join(",")]);
    if !config.only.is_empty() {
        let mut wanted: Vec<&str> = config.only.iter().map(|m| reference_measure(m)).collect();
        wanted.sort_unstable();
        wanted.dedup();
        v.extend(["--only".to_string(), wanted.join(",")]);
    }
    v
}

impl LlmBench {
    /// The Markdown summary: per measure, each side's tokens/s and share of the ceiling, and dnd's
    /// ratio to each reference (median over rounds, with its range).
    pub fn table(&self) -> String {
        let c = &self.ceiling;
        let mut t = format!(
            "Matmul ceiling at the model's shapes: {:.0} GFLOP/s (dnd's products, {}: {:.0}; PyTorch: {}). Rounds: {}.\n\n\
             | measure | dnd tok/s (share) | PyTorch tok/s (share) | dnd / PyTorch | llama.cpp tok/s (share) | dnd / llama.cpp |\n\
             |---|---|---|---|---|---|\n",
            c.gflop_s,
            self.blas,
            c.dnd_forward_gflop_s,
            table::value(c.reference_forward_gflop_s, 0),
            self.rounds,
        );
        for m in &self.measures {
            let side = |name: &str| match m.references.get(name) {
                Some(v) => (
                    format!("{:.1} ({:.0}%)", v.tok_s, 100.0 * v.share),
                    format!(
                        "{} ({:.2}-{:.2})",
                        table::times(Some(v.ratio)),
                        v.ratio_min,
                        v.ratio_max
                    ),
                ),
                None => ("-".into(), "-".into()),
            };
            let ((pt, pr), (lt, lr)) = (side("torch"), side("llama_cpp"));
            t += &format!(
                "| {} | {:.1} ({:.0}%) | {pt} | {pr} | {lt} | {lr} |\n",
                self.label(&m.name),
                m.dnd_tok_s,
                100.0 * m.dnd_share
            );
        }
        let get = |n: &str| {
            self.measures
                .iter()
                .find(|m| m.name == n)
                .map(|m| m.dnd_tok_s)
        };
        for suffix in ["", "_quantized"] {
            let one = get(&format!("decode_1{suffix}"));
            let many = get(&format!("decode_batch{suffix}"));
            if let (Some(one), Some(many)) = (one, many) {
                t += &format!(
                    "\ndnd batch-{} decode over single-stream decode{}: {:.2}x\n",
                    self.decode.batch,
                    suffix.replace('_', ", "),
                    many / one
                );
            }
        }
        t
    }

    fn label(&self, name: &str) -> String {
        let d = self.decode;
        match name {
            "forward" => format!("forward, hidden states ({} x {})", self.batch, self.seq),
            "lora_train" => format!(
                "LoRA training step, every-token loss ({} x {})",
                self.batch, self.seq
            ),
            "decode_1" => format!(
                "greedy decode, 1 sequence ({} + {} tokens)",
                d.prompt, d.new_tokens
            ),
            "decode_batch" => format!("greedy decode, {} sequences", d.batch),
            "decode_1_quantized" => "greedy decode, 1 sequence, quantised blocks".into(),
            "decode_batch_quantized" => {
                format!("greedy decode, {} sequences, quantised blocks", d.batch)
            }
            other => other.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(dnd: &[(&str, f64)], torch: &[(&str, f64)]) -> Round {
        let map = |v: &[(&str, f64)]| v.iter().map(|&(k, x)| (k.to_string(), x)).collect();
        Round {
            dnd: map(dnd),
            references: BTreeMap::from([("torch".to_string(), map(torch))]),
            ..Round::default()
        }
    }

    fn ceiling_of(gflop_s: f64) -> Ceiling {
        Ceiling {
            square_2048_gflop_s: 0.0,
            shapes: vec![],
            dnd_forward_gflop_s: gflop_s,
            reference_forward_gflop_s: None,
            gflop_s,
        }
    }

    #[test]
    fn ratios_are_taken_within_rounds_and_their_median_reported() {
        // Round 2's machine is twice as slow for both sides: its ratio is the same as round 1's.
        let rounds = [
            round(&[("forward", 100.0)], &[("forward", 50.0)]),
            round(&[("forward", 50.0)], &[("forward", 25.0)]),
            round(&[("forward", 90.0)], &[("forward", 60.0)]),
        ];
        let flop = MEASURES.iter().map(|m| (m.to_string(), 1e9)).collect();
        let m = summarise(&rounds, &flop, &ceiling_of(200.0));
        let fwd = &m[0];
        assert_eq!(fwd.name, "forward");
        assert_eq!(fwd.dnd_tok_s, 90.0);
        let t = &fwd.references["torch"];
        assert_eq!((t.ratio, t.ratio_min, t.ratio_max), (2.0, 1.5, 2.0));
        assert_eq!(t.tok_s, 50.0);
        // 90 tok/s x 1 GFLOP per token of a 200 GFLOP/s ceiling.
        assert!((fwd.dnd_share - 0.45).abs() < 1e-12);
        // dnd did not measure decoding (`--only forward`): no row for it.
        assert_eq!(m.len(), 1);
        // dnd's quantised decoding is compared with the reference's plain decoding.
        let rounds = [round(
            &[("decode_1_quantized", 30.0)],
            &[("decode_1", 20.0)],
        )];
        let m = summarise(&rounds, &flop, &ceiling_of(200.0));
        let q = m.iter().find(|m| m.name == "decode_1_quantized").unwrap();
        assert_eq!(q.references["torch"].ratio, 1.5);
    }

    #[test]
    fn training_counts_two_passes_with_the_head_and_decoding_one_with_it() {
        let cfg = crate::ceiling::tests::smollm2();
        let config = LlmBenchConfig {
            model: "m".into(),
            batch: 8,
            seq: 128,
            steps: 1,
            rounds: 1,
            decode: DecodeShape {
                prompt: 32,
                new_tokens: 128,
                batch: 16,
            },
            ceiling_seconds: 0.0,
            reference: None,
            only: Vec::new(),
        };
        let f = flop_per_token(&cfg, &config);
        let head = 2.0 * 576.0 * 49152.0;
        assert!((f["lora_train"] - 2.0 * (f["forward"] + head)).abs() < 1.0);
        let proj = crate::ceiling::projection_flop_per_token(&cfg);
        // Decoding attends to 32 + 64.5 keys on average.
        let attn = 30.0 * 4.0 * 576.0 * 96.5;
        assert!((f["decode_1"] - (proj + attn + head)).abs() < 1.0);
        assert_eq!(f["decode_1"], f["decode_batch"]);
        assert_eq!(f["decode_1"], f["decode_1_quantized"]);
    }

    #[test]
    fn reference_arguments_name_every_shape() {
        let config = LlmBenchConfig {
            model: "m.gguf".into(),
            batch: 2,
            seq: 4,
            steps: 1,
            rounds: 1,
            decode: DecodeShape {
                prompt: 3,
                new_tokens: 5,
                batch: 6,
            },
            ceiling_seconds: 0.0,
            reference: None,
            only: Vec::new(),
        };
        let shapes = crate::ceiling::model_shapes(&crate::ceiling::tests::smollm2(), 8, 0);
        let a = reference_args(&config, &shapes).join(" ");
        assert!(
            a.starts_with("--model m.gguf --batch 2 --seq 4 --steps 1"),
            "{a}"
        );
        assert!(
            a.contains("--decode-prompt 3 --decode-new 5 --decode-batch 6"),
            "{a}"
        );
        assert!(
            a.ends_with("--matmul-shapes 8x576x576x60,8x576x192x60,8x576x1536x60,8x1536x576x30"),
            "{a}"
        );
        // `--only` asks the references for the plain measures behind dnd's quantised ones, once.
        let config = LlmBenchConfig {
            only: vec![
                "decode_1".into(),
                "decode_1_quantized".into(),
                "forward".into(),
            ],
            ..config
        };
        let a = reference_args(&config, &shapes).join(" ");
        assert!(a.ends_with("--only decode_1,forward"), "{a}");
    }
}
