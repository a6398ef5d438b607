//! `dnd bench ...`: throughput measured side by side with the reference implementation in the same run,
//! reported as ratios (absolute times on these shared machines are noisy and not comparable across runs).

mod generate;

use crate::common::{python_reference, ModelArg};
use anyhow::Result;
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use dnd_llm::train::{lm_loss, LmBatch};
use dnd_llm::{Lora, LoraConfig};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Base-LLM forward and LoRA-training tokens/s against PyTorch (+PEFT) on the same model.
    Llm(LlmArgs),
    /// LoRA fine-tuning throughput of dnd's trainer against PyTorch+PEFT on the same batch.
    Finetune(crate::finetune::BenchArgs),
    /// Generation latency (prompts -> adapter on disk) against the official PyTorch decoder, and
    /// decoder training steps/s.
    Generate(generate::GenerateArgs),
}

#[derive(clap::Args)]
pub struct LlmArgs {
    #[command(flatten)]
    model: ModelArg,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Timed steps per measurement (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Python with torch/transformers/peft for the reference (see scripts/reference/README.md).
    /// Without it only dnd is measured.
    #[arg(long, env = "DND_REF_PYTHON")]
    python: Option<PathBuf>,
    /// Result file (JSON); a Markdown table goes to stdout.
    #[arg(long, default_value = "results/bench/llm.json")]
    out: PathBuf,
}

pub fn run(b: Bench) -> Result<()> {
    match b {
        Bench::Llm(a) => llm(a),
        Bench::Finetune(a) => crate::finetune::bench(a),
        Bench::Generate(a) => generate::run(a),
    }
}

/// Mean seconds of `steps` calls after one warm-up call.
fn timed(steps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let t = Instant::now();
    for _ in 0..steps {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() / steps as f64)
}

/// The median of `v` (the mean of the two middle values for an even count; NaN when empty).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Median seconds of `steps` calls after one warm-up call, with each timed call's seconds.
fn median_time(steps: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, Vec<f64>)> {
    f()?;
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok((median(times.clone()), times))
}

/// The 1-minute load average: recorded with every result because a loaded 2-core machine distorts
/// timings (llama.cpp's OpenMP threads spin-wait when cores are taken, far worse than the rest).
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn llm(a: LlmArgs) -> Result<()> {
    let load_before = loadavg();
    let path = a.model.path()?;
    let llm = a.model.load()?;
    let model = &llm.model;
    let cfg = model.config().clone();
    let ntok = (a.batch * a.seq) as f64;
    // Fixed pseudo-random ids: the content does not matter for speed.
    let ids: Vec<u32> = (0..a.batch * a.seq)
        .map(|i| ((i as u64 * 2654435761) % cfg.vocab_size as u64) as u32)
        .collect();
    let ids_t = Tensor::from_vec(ids.clone(), (a.batch, a.seq), &Device::Cpu)?;
    let hidden_s = timed(a.steps, || {
        model
            .hidden(&ids_t, None, None)
            .map(|_| ())
            .map_err(Into::into)
    })?;
    let full_s = timed(a.steps, || {
        model.forward(&ids_t, None).map(|_| ()).map_err(Into::into)
    })?;
    let rss_forward = dnd_io::peak_rss_mb();

    let lora = Lora::init(LoraConfig::paper_default(), &cfg, 0, model.dtype())?;
    let (lora, vars) = lora.to_vars()?;
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: 1e-4,
            ..Default::default()
        },
    )?;
    let seqs: Vec<(Vec<u32>, Vec<bool>)> = ids
        .chunks(a.seq)
        .map(|s| (s.to_vec(), vec![true; s.len()]))
        .collect();
    let batch = LmBatch::new(&seqs, 0, &Device::Cpu)?;
    let mut losses = Vec::new();
    let train_s = timed(a.steps, || {
        let loss = lm_loss(model, Some(&lora), &batch)?;
        opt.backward_step(&loss)?;
        losses.push(loss.to_scalar::<f32>()?);
        Ok(())
    })?;
    let dnd = json!({
        "forward_hidden_tok_s": ntok / hidden_s,
        "forward_full_logits_tok_s": ntok / full_s,
        "lora_train_tok_s": ntok / train_s,
        "peak_rss_mb_after_forward": rss_forward,
        "peak_rss_mb_after_train": dnd_io::peak_rss_mb(),
        "loss_first": losses.first(),
        "loss_last": losses.last(),
    });
    let reference = match &a.python {
        Some(py) => Some(python_reference(
            py,
            "bench_torch.py",
            &reference_args(&path, &a),
        )?),
        None => None,
    };
    // llama.cpp is optional in the reference environment: report it when it runs.
    let llama_cpp = a.python.as_ref().and_then(|py| {
        python_reference(py, "bench_llamacpp.py", &reference_args(&path, &a))
            .map_err(|e| tracing::warn!("llama.cpp reference skipped: {e}"))
            .ok()
    });
    let ratio = |dnd_key: &str, ref_path: &[&str]| -> Value {
        let r = reference
            .as_ref()
            .and_then(|r| ref_path.iter().try_fold(r, |v, k| v.get(k)))
            .and_then(Value::as_f64);
        match (dnd[dnd_key].as_f64(), r) {
            (Some(d), Some(r)) if r > 0.0 => json!(d / r),
            _ => Value::Null,
        }
    };
    let result = json!({
        "bench": "llm",
        "model": path.display().to_string(),
        "batch": a.batch, "seq": a.seq, "steps": a.steps,
        "lora": {"rank": 8, "alpha": 16, "targets": "q,k,v,o,gate,up,down"},
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "loadavg_1m_before_after": [load_before, loadavg()],
        "dnd": dnd,
        "torch": reference,
        "llama_cpp": llama_cpp,
        "ratio_dnd_forward_hidden_over_llama_cpp": match (dnd["forward_hidden_tok_s"].as_f64(), llama_cpp.as_ref().and_then(|l| l["forward"]["tok_s"].as_f64())) {
            (Some(d), Some(l)) if l > 0.0 => json!(d / l),
            _ => Value::Null,
        },
        "ratio_dnd_over_torch": {
            "forward_hidden": ratio("forward_hidden_tok_s", &["forward_hidden", "tok_s"]),
            "forward_full_logits": ratio("forward_full_logits_tok_s", &["forward_full_logits", "tok_s"]),
            "lora_train": ratio("lora_train_tok_s", &["lora_train", "tok_s"]),
        },
    });
    dnd_io::write_atomic(&a.out, &serde_json::to_string_pretty(&result)?)?;
    let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.1}"));
    let r = reference.clone().unwrap_or(Value::Null);
    let ra = &result["ratio_dnd_over_torch"];
    println!(
        "| measure (batch {} x {}) | dnd tok/s | torch tok/s | ratio |",
        a.batch, a.seq
    );
    println!("|---|---|---|---|");
    for (name, dk, rk, rr) in [
        (
            "forward, hidden states",
            "forward_hidden_tok_s",
            "forward_hidden",
            "forward_hidden",
        ),
        (
            "forward, all logits",
            "forward_full_logits_tok_s",
            "forward_full_logits",
            "forward_full_logits",
        ),
        (
            "LoRA training step",
            "lora_train_tok_s",
            "lora_train",
            "lora_train",
        ),
    ] {
        let ratio = ra[rr].as_f64().map_or("-".into(), |x| format!("{x:.2}x"));
        println!(
            "| {name} | {} | {} | {ratio} |",
            f(&result["dnd"][dk]),
            f(&r[rk]["tok_s"])
        );
    }
    if let Some(l) = llama_cpp
        .as_ref()
        .and_then(|l| l["forward"]["tok_s"].as_f64())
    {
        let r = result["ratio_dnd_forward_hidden_over_llama_cpp"]
            .as_f64()
            .unwrap_or(0.0);
        println!(
            "| forward vs llama.cpp (last-position logits) | {} | llama.cpp {l:.1} | {r:.2}x |",
            f(&result["dnd"]["forward_hidden_tok_s"])
        );
    }
    println!("results written to {}", a.out.display());
    Ok(())
}

/// The reference scripts' arguments for this benchmark's shape.
fn reference_args(model: &std::path::Path, a: &LlmArgs) -> Vec<String> {
    let mut v = vec!["--model".to_string(), model.display().to_string()];
    for (k, x) in [("--batch", a.batch), ("--seq", a.seq), ("--steps", a.steps)] {
        v.extend([k.to_string(), x.to_string()]);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_empty_sets() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}
