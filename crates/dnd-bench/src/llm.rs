//! `dnd bench llm`: the base model's forward pass and LoRA training step in tokens/s against PyTorch
//! (+PEFT) on the same model and batch, and the forward pass against llama.cpp where the reference
//! environment has it (`results/bench/llm.json`).

use crate::stats::{mean_time, ratio};
use crate::{table, LoraShape, Reference, Result, ALL_TARGETS};
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use dnd_llm::train::{lm_loss, LmBatch};
use dnd_llm::{Lora, LoraConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::PathBuf;

const TORCH_SCRIPT: &str = "bench_torch.py";
const LLAMA_CPP_SCRIPT: &str = "bench_llamacpp.py";

/// What to measure.
#[derive(Clone, Debug)]
pub struct LlmBenchConfig {
    /// The base model (a GGUF file or a Hugging Face directory); the references load the same file.
    pub model: PathBuf,
    pub batch: usize,
    pub seq: usize,
    /// Timed steps per measurement (after one warm-up step).
    pub steps: usize,
    /// Without it only dnd is measured.
    pub reference: Option<Reference>,
}

/// `results/bench/llm.json`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct LlmBench {
    /// Always `llm`.
    pub bench: String,
    pub model: String,
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
    pub lora: LoraShape<u32>,
    pub threads: usize,
    pub loadavg_1m_before_after: [Option<f64>; 2],
    pub dnd: LlmDnd,
    pub torch: Option<TorchLlm>,
    pub llama_cpp: Option<LlamaCpp>,
    pub ratio_dnd_forward_hidden_over_llama_cpp: Option<f64>,
    pub ratio_dnd_over_torch: LlmRatios,
}

/// dnd's side: mean tokens/s of each measurement.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct LlmDnd {
    /// The final hidden states only (what scoring and training need before the head).
    pub forward_hidden_tok_s: f64,
    /// With logits at every position.
    pub forward_full_logits_tok_s: f64,
    /// Forward, backward and AdamW with the paper's LoRA on every projection.
    pub lora_train_tok_s: f64,
    pub peak_rss_mb_after_forward: f64,
    pub peak_rss_mb_after_train: f64,
    pub loss_first: Option<f64>,
    pub loss_last: Option<f64>,
}

/// A reference measurement: the tokens/s compared, and whatever else the script recorded, kept as
/// written so the results file holds all of it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Throughput {
    pub tok_s: f64,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// `bench_torch.py`'s record.
#[derive(Debug, Serialize, Deserialize)]
pub struct TorchLlm {
    pub forward_hidden: Throughput,
    pub forward_full_logits: Throughput,
    pub lora_train: Throughput,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// `bench_llamacpp.py`'s record (its forward pass returns last-position logits only).
#[derive(Debug, Serialize, Deserialize)]
pub struct LlamaCpp {
    pub forward: Throughput,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// dnd's tokens/s over PyTorch's, per measurement; null without the reference.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct LlmRatios {
    pub forward_hidden: Option<f64>,
    pub forward_full_logits: Option<f64>,
    pub lora_train: Option<f64>,
}

impl LlmRatios {
    fn new(dnd: &LlmDnd, torch: Option<&TorchLlm>) -> Self {
        Self {
            forward_hidden: ratio(
                dnd.forward_hidden_tok_s,
                torch.map(|t| t.forward_hidden.tok_s),
            ),
            forward_full_logits: ratio(
                dnd.forward_full_logits_tok_s,
                torch.map(|t| t.forward_full_logits.tok_s),
            ),
            lora_train: ratio(dnd.lora_train_tok_s, torch.map(|t| t.lora_train.tok_s)),
        }
    }
}

/// Measure dnd, then the references (PyTorch must run; llama.cpp is optional in the reference
/// environment and is skipped with a warning when its script fails).
pub fn run(config: &LlmBenchConfig) -> Result<LlmBench> {
    if let Some(r) = &config.reference {
        r.script(TORCH_SCRIPT)?;
    }
    let load_before = crate::loadavg();
    let dnd = measure_dnd(config)?;
    let args = reference_args(config);
    let torch = match &config.reference {
        Some(r) => Some(r.run::<TorchLlm>(TORCH_SCRIPT, &args)?),
        None => None,
    };
    let llama_cpp = config.reference.as_ref().and_then(|r| {
        r.run::<LlamaCpp>(LLAMA_CPP_SCRIPT, &args)
            .map_err(|e| tracing::warn!("llama.cpp reference skipped: {e}"))
            .ok()
    });
    Ok(LlmBench {
        bench: "llm".into(),
        model: config.model.display().to_string(),
        batch: config.batch,
        seq: config.seq,
        steps: config.steps,
        lora: LoraShape {
            rank: 8,
            alpha: 16,
            targets: ALL_TARGETS.into(),
        },
        threads: crate::threads(),
        loadavg_1m_before_after: [load_before, crate::loadavg()],
        ratio_dnd_forward_hidden_over_llama_cpp: ratio(
            dnd.forward_hidden_tok_s,
            llama_cpp.as_ref().map(|l| l.forward.tok_s),
        ),
        ratio_dnd_over_torch: LlmRatios::new(&dnd, torch.as_ref()),
        dnd,
        torch,
        llama_cpp,
    })
}

/// dnd's forward passes (hidden states, then all logits) and LoRA training steps on one fixed batch.
fn measure_dnd(config: &LlmBenchConfig) -> Result<LlmDnd> {
    let llm = crate::load_model(&config.model)?;
    let model = &llm.model;
    let ntok = (config.batch * config.seq) as f64;
    let ids = crate::fixed_ids(config.batch * config.seq, model.config().vocab_size);
    let ids_t = Tensor::from_vec(ids.clone(), (config.batch, config.seq), &Device::Cpu)?;
    tracing::info!("timing dnd's forward pass");
    let hidden_s = mean_time(config.steps, || {
        model.hidden(&ids_t, None, None)?;
        Ok(())
    })?;
    let full_s = mean_time(config.steps, || {
        model.forward(&ids_t, None)?;
        Ok(())
    })?;
    let peak_rss_mb_after_forward = dnd_io::peak_rss_mb();
    tracing::info!("timing dnd's LoRA training step");
    let (train_s, losses) = lora_train(&llm, &ids, config)?;
    Ok(LlmDnd {
        forward_hidden_tok_s: ntok / hidden_s,
        forward_full_logits_tok_s: ntok / full_s,
        lora_train_tok_s: ntok / train_s,
        peak_rss_mb_after_forward,
        peak_rss_mb_after_train: dnd_io::peak_rss_mb(),
        loss_first: losses.first().map(|&l| f64::from(l)),
        loss_last: losses.last().map(|&l| f64::from(l)),
    })
}

/// Mean seconds of a LoRA training step (the paper's LoRA, causal-LM loss on every token, AdamW at
/// 1e-4, as `bench_torch.py` trains), and the loss of every step including the warm-up.
fn lora_train(llm: &dnd_llm::Llm, ids: &[u32], config: &LlmBenchConfig) -> Result<(f64, Vec<f32>)> {
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
    let mut losses = Vec::new();
    let train_s = mean_time(config.steps, || {
        let loss = lm_loss(model, Some(&lora), &batch)?;
        opt.backward_step(&loss)?;
        losses.push(loss.to_scalar::<f32>()?);
        Ok(())
    })?;
    Ok((train_s, losses))
}

/// The reference scripts' arguments for this benchmark's shape.
fn reference_args(config: &LlmBenchConfig) -> Vec<String> {
    let mut v = vec!["--model".to_string(), config.model.display().to_string()];
    for (k, x) in [
        ("--batch", config.batch),
        ("--seq", config.seq),
        ("--steps", config.steps),
    ] {
        v.extend([k.to_string(), x.to_string()]);
    }
    v
}

impl LlmBench {
    /// The Markdown summary: tokens/s of each side and their ratio per measurement.
    pub fn table(&self) -> String {
        let mut t = format!(
            "| measure (batch {} x {}) | dnd tok/s | torch tok/s | ratio |\n|---|---|---|---|\n",
            self.batch, self.seq
        );
        let (d, r) = (&self.dnd, &self.ratio_dnd_over_torch);
        let torch = self.torch.as_ref();
        let rows = [
            (
                "forward, hidden states",
                d.forward_hidden_tok_s,
                torch.map(|t| t.forward_hidden.tok_s),
                r.forward_hidden,
            ),
            (
                "forward, all logits",
                d.forward_full_logits_tok_s,
                torch.map(|t| t.forward_full_logits.tok_s),
                r.forward_full_logits,
            ),
            (
                "LoRA training step",
                d.lora_train_tok_s,
                torch.map(|t| t.lora_train.tok_s),
                r.lora_train,
            ),
        ];
        for (name, dnd, torch, ratio) in rows {
            t += &format!(
                "| {name} | {} | {} | {} |\n",
                table::value(Some(dnd), 1),
                table::value(torch, 1),
                table::times(ratio)
            );
        }
        if let Some(l) = &self.llama_cpp {
            t += &format!(
                "| forward vs llama.cpp (last-position logits) | {} | llama.cpp {:.1} | {:.2}x |\n",
                table::value(Some(d.forward_hidden_tok_s), 1),
                l.forward.tok_s,
                self.ratio_dnd_forward_hidden_over_llama_cpp.unwrap_or(0.0)
            );
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed `llm.json` with the load averages, which were added to the record after the
    /// file was written, as an unreadable /proc would leave them.
    fn committed_value() -> Value {
        let mut v: Value =
            serde_json::from_str(include_str!("../../../results/bench/llm.json")).unwrap();
        assert!(v.get("loadavg_1m_before_after").is_none());
        v["loadavg_1m_before_after"] = serde_json::json!([null, null]);
        v
    }

    fn committed() -> LlmBench {
        serde_json::from_value(committed_value()).unwrap()
    }

    #[test]
    fn the_record_keeps_the_keys_and_values_of_the_committed_file() {
        let committed = committed_value();
        let record: LlmBench = serde_json::from_value(committed.clone()).unwrap();
        assert_eq!(crate::sorted_json(&record), committed);
    }

    #[test]
    fn ratios_divide_dnd_by_the_reference_and_are_null_without_it() {
        let record = committed();
        let r = LlmRatios::new(&record.dnd, record.torch.as_ref());
        assert_eq!(r.forward_hidden, Some(165.24015900628038 / 141.26));
        let committed = record.ratio_dnd_over_torch.lora_train.unwrap();
        assert!((r.lora_train.unwrap() - committed).abs() < 1e-12);
        let none = LlmRatios::new(&record.dnd, None);
        assert_eq!(
            (
                none.forward_hidden,
                none.forward_full_logits,
                none.lora_train
            ),
            (None, None, None)
        );
    }

    #[test]
    fn the_table_shows_both_sides_and_llama_cpp() {
        let mut record = committed();
        let t = record.table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "| measure (batch 8 x 128) | dnd tok/s | torch tok/s | ratio |"
        );
        assert_eq!(
            lines[2],
            "| forward, hidden states | 165.2 | 141.3 | 1.17x |"
        );
        assert_eq!(lines[4], "| LoRA training step | 32.3 | 14.7 | 2.20x |");
        assert_eq!(
            lines[5],
            "| forward vs llama.cpp (last-position logits) | 165.2 | llama.cpp 20.5 | 8.05x |"
        );
        record.torch = None;
        record.llama_cpp = None;
        record.ratio_dnd_over_torch = LlmRatios::new(&record.dnd, None);
        let t = record.table();
        assert_eq!(t.lines().count(), 5, "no llama.cpp row: {t}");
        assert!(t.contains("| forward, all logits | 95.9 | - | - |"), "{t}");
    }
}
