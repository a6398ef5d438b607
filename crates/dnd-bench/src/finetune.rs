//! `dnd bench finetune`: dnd's LoRA fine-tuning step (micro-batching, clipping, AdamW: the same
//! `Trainer` as `dnd finetune`) on one fixed batch, against PyTorch+PEFT in both of its loss modes
//! (`results/finetune/throughput.json`). The load of a shared machine drifts, so the run is split into
//! rounds of (dnd, then each PyTorch mode), ratios are taken per round and their median is reported.

use crate::stats::{median, ratio};
use crate::{table, BenchError, LoraShape, Reference, Result, ALL_TARGETS};
use dnd_collect::{CollectDefaults, Sequence, Trainer};
use dnd_llm::Lora;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

const SFT_SCRIPT: &str = "bench_torch_sft.py";

/// What to measure.
#[derive(Clone, Debug)]
pub struct FinetuneBenchConfig {
    /// The base model; the reference loads the same file.
    pub model: PathBuf,
    pub batch: usize,
    pub seq: usize,
    /// Tokens at the end of each row that carry the loss (0: every token, as in pre-training).
    pub answer_tokens: usize,
    pub rank: usize,
    pub alpha: f64,
    /// Timed steps per round (dnd's after one warm-up step).
    pub steps: usize,
    pub rounds: usize,
    /// Without it only dnd runs.
    pub reference: Option<Reference>,
}

/// How the PyTorch reference computes the loss: logits at every position (what `labels=` in
/// transformers does), or only at the answer tokens (what dnd does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossMode {
    FullLogits,
    TargetLogits,
}

impl LossMode {
    pub const ALL: [Self; 2] = [Self::FullLogits, Self::TargetLogits];

    /// The name the script's `--mode` takes and the records use.
    pub fn name(self) -> &'static str {
        match self {
            Self::FullLogits => "full_logits",
            Self::TargetLogits => "target_logits",
        }
    }
}

/// `results/finetune/throughput.json`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct FinetuneBench {
    /// Always `finetune`.
    pub bench: String,
    pub model: String,
    pub batch: usize,
    pub seq: usize,
    pub answer_tokens: usize,
    pub steps: usize,
    pub rounds: usize,
    pub lora: LoraShape<f64>,
    pub threads: usize,
    pub dnd: FinetuneDnd,
    /// Per PyTorch mode, medians over the rounds; empty without the reference.
    pub torch: BTreeMap<LossMode, TorchMedians>,
    pub ratio_dnd_over_torch: FinetuneRatios,
    pub per_round: Vec<FinetuneRound>,
}

/// dnd over all rounds' timed steps.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct FinetuneDnd {
    pub tok_s: f64,
    /// Of the fastest step.
    pub tok_s_best: f64,
    pub step_s_mean: f64,
    /// Of the warm-up step, to compare with the reference's first loss.
    pub loss_first: f64,
    pub peak_rss_mb: f64,
}

/// One PyTorch mode's medians over the rounds.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct TorchMedians {
    pub tok_s: f64,
    pub peak_rss_mb: f64,
}

/// The medians over rounds of dnd's per-round ratio to each PyTorch mode.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct FinetuneRatios {
    pub vs_full_logits: Option<f64>,
    pub vs_target_logits: Option<f64>,
}

/// One round: dnd's tokens/s, then each PyTorch mode right after it.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct FinetuneRound {
    pub dnd_tok_s: f64,
    pub torch: BTreeMap<LossMode, TorchSft>,
    pub ratio_dnd_over_torch: BTreeMap<LossMode, Option<f64>>,
}

/// `bench_torch_sft.py`'s record: the fields compared, and the rest kept as written.
#[derive(Debug, Serialize, Deserialize)]
pub struct TorchSft {
    pub tok_s: f64,
    /// Rounded to whole MiB by the script.
    pub peak_rss_mb: u64,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Train dnd and run the reference round by round, then summarise. PyTorch runs each mode in its own
/// process, so that peak memory is per implementation.
pub fn run(config: &FinetuneBenchConfig) -> Result<FinetuneBench> {
    if config.answer_tokens >= config.seq {
        return Err(BenchError::Config(
            "--answer-tokens must be below --seq".into(),
        ));
    }
    if config.rounds == 0 || config.steps == 0 {
        return Err(BenchError::Config(
            "--rounds and --steps must be positive".into(),
        ));
    }
    if let Some(r) = &config.reference {
        r.script(SFT_SCRIPT)?;
    }
    let (dnd, per_round) = train_rounds(config)?;
    let torch = LossMode::ALL
        .into_iter()
        .filter_map(|mode| Some((mode, TorchMedians::over(&per_round, mode)?)))
        .collect();
    Ok(FinetuneBench {
        bench: "finetune".into(),
        model: config.model.display().to_string(),
        batch: config.batch,
        seq: config.seq,
        answer_tokens: config.answer_tokens,
        steps: config.steps,
        rounds: config.rounds,
        lora: LoraShape {
            rank: config.rank,
            alpha: config.alpha,
            targets: ALL_TARGETS.into(),
        },
        threads: crate::threads(),
        dnd,
        torch,
        ratio_dnd_over_torch: FinetuneRatios {
            vs_full_logits: median_ratio(&per_round, LossMode::FullLogits),
            vs_target_logits: median_ratio(&per_round, LossMode::TargetLogits),
        },
        per_round,
    })
}

/// dnd's training steps, one warm-up then `steps` timed per round, with the reference after each
/// round's steps; the model stays loaded throughout, as it would in a fine-tuning run.
fn train_rounds(config: &FinetuneBenchConfig) -> Result<(FinetuneDnd, Vec<FinetuneRound>)> {
    let llm = crate::load_model(&config.model)?;
    let cfg = llm.model.config();
    let seqs = fixed_batch(config, cfg.vocab_size);
    let mut train = CollectDefaults::collection();
    train.rank = config.rank;
    train.alpha = config.alpha;
    train.batch = config.batch;
    train.max_len = config.seq;
    train.micro_batch_tokens = config.batch * config.seq;
    train.steps = config.steps * config.rounds + 1;
    let init = Lora::init(train.lora_config()?, cfg, train.seed, llm.model.dtype())?;
    let mut trainer = Trainer::new(&llm.model, &init, &train)?;
    let batch: Vec<&Sequence> = seqs.iter().collect();
    let ntok = (config.batch * config.seq) as f64;
    let loss_first = trainer.step(&batch)?.loss;
    let mut all_times = Vec::new();
    let mut rounds = Vec::new();
    for round in 0..config.rounds {
        tracing::info!("round {} of {}: dnd", round + 1, config.rounds);
        let mut times = Vec::new();
        for _ in 0..config.steps {
            let t = Instant::now();
            trainer.step(&batch)?;
            times.push(t.elapsed().as_secs_f64());
        }
        let dnd_tok_s = ntok * times.len() as f64 / times.iter().sum::<f64>();
        all_times.extend(times);
        rounds.push(FinetuneRound::measure(config, dnd_tok_s)?);
    }
    let mean = all_times.iter().sum::<f64>() / all_times.len() as f64;
    let best = all_times.iter().copied().fold(f64::MAX, f64::min);
    let dnd = FinetuneDnd {
        tok_s: ntok / mean,
        tok_s_best: ntok / best,
        step_s_mean: mean,
        loss_first,
        peak_rss_mb: dnd_io::peak_rss_mb(),
    };
    Ok((dnd, rounds))
}

/// `batch` rows of `seq` fixed ids (those of the reference script), each with its last
/// `answer_tokens` carrying the loss (all but the first token when 0).
fn fixed_batch(config: &FinetuneBenchConfig, vocab: usize) -> Vec<Sequence> {
    let context_len = if config.answer_tokens == 0 {
        1
    } else {
        config.seq - config.answer_tokens
    };
    crate::fixed_ids(config.batch * config.seq, vocab)
        .chunks(config.seq)
        .map(|ids| Sequence {
            ids: ids.to_vec(),
            context_len,
        })
        .collect()
}

impl FinetuneRound {
    /// The reference in each mode right after dnd's steps of this round.
    fn measure(config: &FinetuneBenchConfig, dnd_tok_s: f64) -> Result<Self> {
        let mut torch = BTreeMap::new();
        if let Some(r) = &config.reference {
            for mode in LossMode::ALL {
                torch.insert(mode, r.run(SFT_SCRIPT, &sft_args(config, mode))?);
            }
        }
        Ok(Self::new(dnd_tok_s, torch))
    }

    fn new(dnd_tok_s: f64, torch: BTreeMap<LossMode, TorchSft>) -> Self {
        let ratio_dnd_over_torch = torch
            .iter()
            .map(|(&mode, t)| (mode, ratio(dnd_tok_s, Some(t.tok_s))))
            .collect();
        Self {
            dnd_tok_s,
            torch,
            ratio_dnd_over_torch,
        }
    }
}

impl TorchMedians {
    /// `mode`'s medians over the rounds, if it ran.
    fn over(rounds: &[FinetuneRound], mode: LossMode) -> Option<Self> {
        let runs: Vec<&TorchSft> = rounds.iter().filter_map(|r| r.torch.get(&mode)).collect();
        if runs.is_empty() {
            return None;
        }
        let tok_s: Vec<f64> = runs.iter().map(|t| t.tok_s).collect();
        let rss: Vec<f64> = runs.iter().map(|t| t.peak_rss_mb as f64).collect();
        Some(Self {
            tok_s: median(&tok_s),
            peak_rss_mb: median(&rss),
        })
    }
}

/// The median over rounds of dnd's ratio to `mode`; null if it never ran.
fn median_ratio(rounds: &[FinetuneRound], mode: LossMode) -> Option<f64> {
    let v: Vec<f64> = rounds
        .iter()
        .filter_map(|r| r.ratio_dnd_over_torch.get(&mode).copied().flatten())
        .collect();
    (!v.is_empty()).then(|| median(&v))
}

/// `bench_torch_sft.py`'s arguments for one loss mode.
fn sft_args(config: &FinetuneBenchConfig, mode: LossMode) -> Vec<String> {
    [
        ("--model", config.model.display().to_string()),
        ("--mode", mode.name().to_string()),
        ("--batch", config.batch.to_string()),
        ("--seq", config.seq.to_string()),
        ("--answer-tokens", config.answer_tokens.to_string()),
        ("--rank", config.rank.to_string()),
        ("--alpha", config.alpha.to_string()),
        ("--steps", config.steps.to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_string(), v])
    .collect()
}

impl FinetuneBench {
    /// The Markdown summary: dnd, then each PyTorch mode with dnd's median ratio to it.
    pub fn table(&self) -> String {
        let mut t = format!(
            "| LoRA SFT step, batch {} x {}, {} answer tokens, {} round(s) | tok/s | peak RSS MiB | \
             dnd / this (median of rounds) |\n|---|---|---|---|\n",
            self.batch, self.seq, self.answer_tokens, self.rounds
        );
        t += &format!(
            "| dnd | {} | {} | |\n",
            table::value(Some(self.dnd.tok_s), 1),
            table::value(Some(self.dnd.peak_rss_mb), 1)
        );
        for (mode, m) in &self.torch {
            let ratio = match mode {
                LossMode::FullLogits => self.ratio_dnd_over_torch.vs_full_logits,
                LossMode::TargetLogits => self.ratio_dnd_over_torch.vs_target_logits,
            };
            t += &format!(
                "| torch+peft ({}) | {} | {} | {} |\n",
                mode.name(),
                table::value(Some(m.tok_s), 1),
                table::value(Some(m.peak_rss_mb), 1),
                table::times(ratio)
            );
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMITTED: &str = include_str!("../../../results/finetune/throughput.json");

    fn committed() -> FinetuneBench {
        serde_json::from_str(COMMITTED).unwrap()
    }

    #[test]
    fn the_record_keeps_the_keys_and_values_of_the_committed_file() {
        let committed: Value = serde_json::from_str(COMMITTED).unwrap();
        let record: FinetuneBench = serde_json::from_value(committed.clone()).unwrap();
        assert_eq!(crate::sorted_json(&record), committed);
    }

    #[test]
    fn summaries_are_the_medians_of_the_rounds() {
        let record = committed();
        // Rebuild the rounds from their reference records alone, then summarise them again.
        let rounds: Vec<FinetuneRound> = record
            .per_round
            .into_iter()
            .map(|r| FinetuneRound::new(r.dnd_tok_s, r.torch))
            .collect();
        let full = TorchMedians::over(&rounds, LossMode::FullLogits).unwrap();
        assert_eq!(full.tok_s, 180.23, "median of 182.03, 180.23, 175.54");
        assert_eq!(full.peak_rss_mb, 4776.0, "median of 4754, 4776, 4835");
        let committed = record.ratio_dnd_over_torch.vs_full_logits.unwrap();
        let again = median_ratio(&rounds, LossMode::FullLogits).unwrap();
        assert!((again - committed).abs() < 1e-12, "{again} vs {committed}");
        assert_eq!(
            rounds[0].ratio_dnd_over_torch[&LossMode::TargetLogits],
            Some(309.7025988941893 / 246.81)
        );
        assert_eq!(rounds[0].ratio_dnd_over_torch.len(), 2);
        let dnd_only = [FinetuneRound::new(100.0, BTreeMap::new())];
        assert!(TorchMedians::over(&dnd_only, LossMode::FullLogits).is_none());
        assert_eq!(median_ratio(&dnd_only, LossMode::TargetLogits), None);
    }

    #[test]
    fn the_table_has_a_row_per_implementation() {
        let mut record = committed();
        let t = record.table();
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("| LoRA SFT step, batch 8 x 128, 8 answer tokens, 3 round(s) |")
        );
        assert_eq!(lines[2], "| dnd | 305.8 | 2911.1 | |");
        assert_eq!(
            lines[3],
            "| torch+peft (full_logits) | 180.2 | 4776.0 | 1.70x |"
        );
        assert_eq!(
            lines[4],
            "| torch+peft (target_logits) | 246.8 | 4214.0 | 1.25x |"
        );
        record.torch.clear();
        assert_eq!(record.table().lines().count(), 3, "dnd only");
    }

    #[test]
    fn loss_modes_are_named_as_the_script_expects() {
        assert_eq!(
            serde_json::to_value(LossMode::ALL).unwrap(),
            serde_json::json!(["full_logits", "target_logits"])
        );
        assert!(LossMode::ALL
            .iter()
            .all(|m| serde_json::to_value(m).unwrap() == m.name()));
    }
}
