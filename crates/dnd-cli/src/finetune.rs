//! `dnd finetune`: one LoRA adapter for one task, with its loss curve and manifest; and
//! `dnd bench finetune`: the same training step's throughput side by side with PyTorch+PEFT.

use crate::common::ModelArg;
use anyhow::{bail, Context, Result};
use dnd_collect::{
    finetune, model_sha256, BaseModel, CollectDefaults, LoraTrainConfig, Sequence, StepRecord,
    Trainer,
};
use dnd_llm::{Lora, Target};
use dnd_tasks::SplitConfig;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Training settings shared by `finetune` and `collect` (defaults: [`CollectDefaults::collection`]).
#[derive(clap::Args, Clone)]
pub struct TrainArgs {
    #[arg(long, default_value_t = CollectDefaults::collection().rank)]
    pub rank: usize,
    #[arg(long, default_value_t = CollectDefaults::collection().alpha)]
    pub alpha: f64,
    /// Projections to adapt: q,k,v,o,gate,up,down (or their PEFT names, q_proj, ...).
    #[arg(long, value_delimiter = ',', default_value = "q,k,v,o,gate,up,down")]
    pub targets: Vec<String>,
    /// Sequences per update.
    #[arg(long, default_value_t = CollectDefaults::collection().batch)]
    pub batch: usize,
    /// Peak learning rate (linear warm-up, then cosine).
    #[arg(long, default_value_t = CollectDefaults::collection().lr)]
    pub lr: f64,
    #[arg(long, default_value_t = CollectDefaults::collection().warmup_steps)]
    pub warmup: usize,
    /// The cosine ends at lr * this.
    #[arg(long, default_value_t = CollectDefaults::collection().min_lr_ratio)]
    pub min_lr_ratio: f64,
    #[arg(long, default_value_t = CollectDefaults::collection().weight_decay)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = CollectDefaults::collection().max_grad_norm)]
    pub max_grad_norm: f64,
    /// Sequence cap in tokens; longer contexts lose their beginning, the answer is kept.
    #[arg(long, default_value_t = CollectDefaults::collection().max_len)]
    pub max_len: usize,
    /// Padded tokens per forward pass (gradient accumulation splits a batch to fit).
    #[arg(long, default_value_t = CollectDefaults::collection().micro_batch_tokens)]
    pub micro_batch_tokens: usize,
    /// Seed of the LoRA initialisation and of the data order.
    #[arg(long, default_value_t = CollectDefaults::collection().seed)]
    pub seed: u64,
    /// Data root.
    #[arg(long, env = "DND_DATA", default_value = dnd_tasks::DEFAULT_DATA_DIR)]
    pub data: PathBuf,
}

impl TrainArgs {
    pub fn config(&self, steps: usize) -> Result<LoraTrainConfig> {
        let mut targets = Vec::new();
        for t in &self.targets {
            let module = if t.ends_with("_proj") {
                t.clone()
            } else {
                format!("{t}_proj")
            };
            let Some(target) = Target::from_module(&module) else {
                bail!("unknown LoRA target `{t}` (expected q,k,v,o,gate,up,down)");
            };
            targets.push(target);
        }
        targets.sort();
        targets.dedup();
        let config = LoraTrainConfig {
            rank: self.rank,
            alpha: self.alpha,
            targets: targets.iter().map(|t| t.module().to_string()).collect(),
            seed: self.seed,
            lr: self.lr,
            warmup_steps: self.warmup,
            min_lr_ratio: self.min_lr_ratio,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            batch: self.batch,
            micro_batch_tokens: self.micro_batch_tokens,
            max_len: self.max_len,
            steps,
        };
        config.validate()?;
        Ok(config)
    }
}

/// The base model's path and sha256 (cached under the dnd cache).
pub fn base_model(model: &ModelArg) -> Result<BaseModel> {
    let path = model.path()?;
    let cache = dnd_assets::cache_root().join(dnd_assets::HASH_MEMO);
    let sha256 =
        model_sha256(&path, &cache).with_context(|| format!("hashing {}", path.display()))?;
    Ok(BaseModel {
        path: path.display().to_string(),
        sha256,
    })
}

/// A progress bar over a run's steps showing loss and throughput.
pub fn step_bar(steps: usize, label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} steps {msg} (eta {eta})",
        )
        .expect("a valid template"),
    );
    bar.set_prefix(label.to_string());
    bar
}

pub fn show_step(bar: &indicatif::ProgressBar, r: &StepRecord) {
    bar.set_position(r.step as u64);
    bar.set_message(format!(
        "loss {:.4} lr {:.2e} {:.0} tok/s",
        r.loss,
        r.lr,
        r.tokens as f64 / r.seconds
    ));
}

#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// Built-in task whose adapter-train split is trained on.
    #[arg(long)]
    task: String,
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    train: TrainArgs,
    /// Updates.
    #[arg(long, default_value_t = CollectDefaults::collection().steps)]
    steps: usize,
    /// Output: a PEFT adapter directory, with manifest.json and loss.png beside the weights.
    #[arg(long)]
    out: PathBuf,
    /// Delete an earlier run in --out instead of resuming it.
    #[arg(long)]
    fresh: bool,
}

pub fn run(a: FinetuneArgs) -> Result<()> {
    let config = a.train.config(a.steps)?;
    if a.fresh && a.out.exists() {
        std::fs::remove_dir_all(&a.out).with_context(|| format!("removing {}", a.out.display()))?;
    }
    let base = base_model(&a.model)?;
    let llm = a.model.load()?;
    let bar = step_bar(config.steps, &a.task);
    let manifest = finetune(
        &llm.model,
        &llm.tokenizer,
        &base,
        &a.task,
        &config,
        &a.train.data,
        &SplitConfig::default(),
        &a.out,
        &mut |r| show_step(&bar, r),
    )?;
    bar.finish();
    let (first, last) = (manifest.steps.first(), manifest.steps.last());
    println!(
        "{}: {} steps, loss {:.4} -> {:.4}, {:.0} s, {:.0} train tok/s; adapter in {}",
        a.task,
        manifest.steps.len(),
        first.map_or(f64::NAN, |r| r.loss),
        last.map_or(f64::NAN, |r| r.loss),
        manifest.wall_time_s,
        manifest.train_tokens_per_s,
        a.out.display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArg,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Tokens at the end of each row that carry the loss (0: every token, as in pre-training).
    #[arg(long, default_value_t = 8)]
    answer_tokens: usize,
    #[arg(long, default_value_t = 8)]
    rank: usize,
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Rounds of (dnd, then each PyTorch mode), each with --steps timed steps: the load on a shared
    /// machine drifts, so ratios are taken per round and the median is reported.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Python with torch/transformers/peft (scripts/reference/README.md); without it only dnd runs.
    #[arg(long, env = "DND_REF_PYTHON")]
    python: Option<PathBuf>,
    /// Result file (JSON); a Markdown table goes to stdout.
    #[arg(long, default_value = "results/finetune/throughput.json")]
    out: PathBuf,
}

/// dnd's training step (micro-batching, clipping, AdamW: the same `Trainer` as `finetune`) on one
/// fixed batch of `batch x seq` tokens, then the PyTorch reference in both of its loss modes, each in
/// its own process so that peak memory is per implementation.
pub fn bench(a: BenchArgs) -> Result<()> {
    if a.answer_tokens >= a.seq {
        bail!("--answer-tokens must be below --seq");
    }
    let path = a.model.path()?;
    let llm = a.model.load()?;
    let cfg = llm.model.config().clone();
    let seqs: Vec<Sequence> = (0..a.batch)
        .map(|b| Sequence {
            ids: (0..a.seq)
                .map(|i| (((b * a.seq + i) as u64 * 2654435761) % cfg.vocab_size as u64) as u32)
                .collect(),
            context_len: if a.answer_tokens == 0 {
                1
            } else {
                a.seq - a.answer_tokens
            },
        })
        .collect();
    if a.rounds == 0 || a.steps == 0 {
        bail!("--rounds and --steps must be positive");
    }
    let mut config = CollectDefaults::collection();
    config.rank = a.rank;
    config.alpha = a.alpha;
    config.batch = a.batch;
    config.max_len = a.seq;
    config.micro_batch_tokens = a.batch * a.seq;
    config.steps = a.steps * a.rounds + 1;
    let init = Lora::init(config.lora_config()?, &cfg, config.seed, llm.model.dtype())?;
    let mut trainer = Trainer::new(&llm.model, &init, &config)?;
    let batch: Vec<&Sequence> = seqs.iter().collect();
    let ntok = (a.batch * a.seq) as f64;
    let loss_first = trainer.step(&batch)?.loss;
    let mut all_times = Vec::new();
    let mut rounds = Vec::new();
    for _ in 0..a.rounds {
        let mut times = Vec::new();
        for _ in 0..a.steps {
            let t = Instant::now();
            trainer.step(&batch)?;
            times.push(t.elapsed().as_secs_f64());
        }
        let dnd_tok_s = ntok * times.len() as f64 / times.iter().sum::<f64>();
        all_times.extend(times);
        let mut torch = serde_json::Map::new();
        if let Some(py) = &a.python {
            for mode in ["full_logits", "target_logits"] {
                torch.insert(mode.into(), torch_sft(py, &path, &a, mode)?);
            }
        }
        let ratios: serde_json::Map<String, Value> = torch
            .iter()
            .filter_map(|(m, t)| Some((m.clone(), json!(dnd_tok_s / t["tok_s"].as_f64()?))))
            .collect();
        rounds
            .push(json!({"dnd_tok_s": dnd_tok_s, "torch": torch, "ratio_dnd_over_torch": ratios}));
    }
    let mean = all_times.iter().sum::<f64>() / all_times.len() as f64;
    let best = all_times.iter().cloned().fold(f64::MAX, f64::min);
    let dnd = json!({
        "tok_s": ntok / mean, "tok_s_best": ntok / best, "step_s_mean": mean,
        "loss_first": loss_first, "peak_rss_mb": dnd_io::peak_rss_mb(),
    });
    drop(trainer);
    drop(llm);
    // Per PyTorch mode: the median over rounds of its tok/s, and of dnd's per-round ratio to it.
    let med = |mode: &str, key: &str| -> Value {
        let v: Vec<f64> = rounds
            .iter()
            .filter_map(|r| match key {
                "ratio" => r["ratio_dnd_over_torch"][mode].as_f64(),
                _ => r["torch"][mode][key].as_f64(),
            })
            .collect();
        if v.is_empty() {
            Value::Null
        } else {
            json!(crate::bench::median(v))
        }
    };
    let mut torch = serde_json::Map::new();
    for mode in ["full_logits", "target_logits"] {
        if !med(mode, "tok_s").is_null() {
            torch.insert(
                mode.into(),
                json!({"tok_s": med(mode, "tok_s"), "peak_rss_mb": med(mode, "peak_rss_mb")}),
            );
        }
    }
    let result = json!({
        "bench": "finetune",
        "model": path.display().to_string(),
        "batch": a.batch, "seq": a.seq, "answer_tokens": a.answer_tokens, "steps": a.steps,
        "rounds": a.rounds,
        "lora": {"rank": a.rank, "alpha": a.alpha, "targets": "q,k,v,o,gate,up,down"},
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "dnd": dnd,
        "torch": torch,
        "ratio_dnd_over_torch": {
            "vs_full_logits": med("full_logits", "ratio"),
            "vs_target_logits": med("target_logits", "ratio"),
        },
        "per_round": rounds,
    });
    dnd_io::write_atomic(&a.out, &serde_json::to_string_pretty(&result)?)?;
    let f = |v: &Value, k: &str| v[k].as_f64().map_or("-".into(), |x| format!("{x:.1}"));
    println!(
        "| LoRA SFT step, batch {} x {}, {} answer tokens, {} round(s) | tok/s | peak RSS MiB | dnd / this (median of rounds) |",
        a.batch, a.seq, a.answer_tokens, a.rounds
    );
    println!("|---|---|---|---|");
    println!(
        "| dnd | {} | {} | |",
        f(&dnd, "tok_s"),
        f(&dnd, "peak_rss_mb")
    );
    let ratios = &result["ratio_dnd_over_torch"];
    for (mode, t) in &torch {
        let r = ratios[format!("vs_{mode}")].as_f64();
        println!(
            "| torch+peft ({mode}) | {} | {} | {} |",
            f(t, "tok_s"),
            f(t, "peak_rss_mb"),
            r.map_or("-".into(), |x| format!("{x:.2}x"))
        );
    }
    println!("results written to {}", a.out.display());
    Ok(())
}

/// Run `scripts/reference/bench_torch_sft.py` in one loss mode and parse its JSON line.
fn torch_sft(python: &Path, model: &Path, a: &BenchArgs, mode: &str) -> Result<Value> {
    let args = [
        ("--model", model.display().to_string()),
        ("--mode", mode.to_string()),
        ("--batch", a.batch.to_string()),
        ("--seq", a.seq.to_string()),
        ("--answer-tokens", a.answer_tokens.to_string()),
        ("--rank", a.rank.to_string()),
        ("--alpha", a.alpha.to_string()),
        ("--steps", a.steps.to_string()),
    ];
    let args: Vec<String> = args
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect();
    crate::common::python_reference(python, "bench_torch_sft.py", &args)
}
