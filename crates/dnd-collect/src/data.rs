//! Supervised sequences and the order they are trained in.
//!
//! A sequence is the evaluator's own tokenisation of (context, gold continuation), so an adapter learns
//! exactly the tokens that are later scored. The data order is a pure function of (seed, step): each
//! epoch is a ChaCha8 shuffle seeded by the seed on the epoch's stream, so a resumed run needs only
//! its step number to see the same batches.

use crate::error::{CollectError, Result};
use candle_core::Device;
use dnd_llm::score::encode_pair;
use dnd_llm::train::LmBatch;
use dnd_llm::Tokenizer;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Context tokens followed by answer tokens; the loss covers the answer only.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub ids: Vec<u32>,
    /// Number of leading context tokens (at least 1, so every answer token has a predecessor).
    pub context_len: usize,
}

impl Sequence {
    pub fn answer_len(&self) -> usize {
        self.ids.len() - self.context_len
    }

    /// The per-token target flags [`dnd_llm::train::LmBatch`] takes.
    pub fn target_flags(&self) -> Vec<bool> {
        (0..self.ids.len()).map(|i| i >= self.context_len).collect()
    }
}

/// What encoding did to the examples, for manifests.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EncodeStats {
    pub sequences: usize,
    /// Sequences whose context was cut from the left to fit the cap.
    pub truncated: usize,
    pub mean_tokens: f64,
    pub max_tokens: usize,
}

/// Tokenise (context, answer) pairs as the evaluator does ([`encode_pair`]) and cap each at `max_len`
/// tokens by dropping context tokens from the left: the answer, which carries the loss, is kept whole
/// (unless it alone exceeds the cap, when its tail is dropped).
pub fn encode(
    tok: &Tokenizer,
    task: &str,
    pairs: &[(String, String)],
    max_len: usize,
) -> Result<(Vec<Sequence>, EncodeStats)> {
    if pairs.is_empty() {
        return Err(CollectError::Data {
            task: task.into(),
            reason: "the adapter-train split is empty".into(),
        });
    }
    if max_len < 2 {
        return Err(CollectError::Config(format!(
            "a sequence cap of {max_len} tokens leaves no room for an answer"
        )));
    }
    let mut seqs = Vec::with_capacity(pairs.len());
    let mut truncated = 0;
    for (context, answer) in pairs {
        let (ctx, mut ans) = encode_pair(tok, context, answer)?;
        ans.truncate(max_len - 1);
        let keep = ctx.len().min(max_len - ans.len());
        truncated += usize::from(keep < ctx.len());
        let mut ids = ctx[ctx.len() - keep..].to_vec();
        ids.extend(&ans);
        seqs.push(Sequence {
            ids,
            context_len: keep,
        });
    }
    let total: usize = seqs.iter().map(|s| s.ids.len()).sum();
    let stats = EncodeStats {
        sequences: seqs.len(),
        truncated,
        mean_tokens: total as f64 / seqs.len() as f64,
        max_tokens: seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0),
    };
    Ok((seqs, stats))
}

/// Indices of the `batch` examples (out of `n`) that update `step` (1-based) trains on: the next slice of
/// an endless stream of epochs, each a seeded shuffle.
pub fn batch_indices(n: usize, batch: usize, step: usize, seed: u64) -> Vec<usize> {
    let start = (step - 1) * batch;
    let mut out = Vec::with_capacity(batch);
    let mut epoch = usize::MAX;
    let mut order: Vec<usize> = Vec::new();
    for p in start..start + batch {
        if p / n != epoch {
            epoch = p / n;
            order = (0..n).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(epoch as u64);
            order.shuffle(&mut rng);
        }
        out.push(order[p % n]);
    }
    out
}

/// `batch` as [`micro_batches`] ready for `dnd_llm::train::lm_loss`, each with its share of the
/// batch's answer tokens: the micro-batch losses weighted by their shares sum to the whole batch's mean
/// answer-token loss, and so do their gradients, however the batch was cut.
pub fn lm_micro_batches(batch: &[&Sequence], max_tokens: usize) -> Result<Vec<(LmBatch, f64)>> {
    let targets: usize = batch.iter().map(|s| s.answer_len()).sum();
    if targets == 0 {
        return Err(CollectError::Config("a batch without answer tokens".into()));
    }
    micro_batches(batch, max_tokens)
        .into_iter()
        .map(|mb| {
            let seqs: Vec<(Vec<u32>, Vec<bool>)> = mb
                .iter()
                .map(|s| (s.ids.clone(), s.target_flags()))
                .collect();
            let lm = LmBatch::new(&seqs, 0, &Device::Cpu)?;
            let share = lm.num_targets as f64 / targets as f64;
            Ok((lm, share))
        })
        .collect()
}

/// Cut a batch into micro-batches of at most `max_tokens` padded tokens (always at least one sequence),
/// after sorting by length so that sequences of similar length share a forward pass: length bucketing
/// within the batch, which leaves the batch's gradient unchanged but wastes little compute on padding.
pub fn micro_batches<'a>(batch: &[&'a Sequence], max_tokens: usize) -> Vec<Vec<&'a Sequence>> {
    let mut sorted = batch.to_vec();
    sorted.sort_by_key(|s| s.ids.len());
    let mut out: Vec<Vec<&Sequence>> = Vec::new();
    let mut current: Vec<&Sequence> = Vec::new();
    for s in sorted {
        if !current.is_empty() && (current.len() + 1) * s.ids.len() > max_tokens {
            out.push(std::mem::take(&mut current));
        }
        current.push(s);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(len: usize) -> Sequence {
        Sequence {
            ids: vec![1; len],
            context_len: 1,
        }
    }

    #[test]
    fn the_order_is_a_function_of_seed_and_step() {
        let n = 7;
        let stream: Vec<usize> = (1..=7).flat_map(|s| batch_indices(n, 3, s, 5)).collect();
        // Three epochs: each a permutation of 0..n, and the epochs differ.
        for e in 0..3 {
            let mut ep = stream[e * n..(e + 1) * n].to_vec();
            ep.sort();
            assert_eq!(ep, (0..n).collect::<Vec<_>>());
        }
        assert_ne!(stream[..n], stream[n..2 * n]);
        assert_eq!(batch_indices(n, 3, 4, 5), stream[9..12]);
        assert_ne!(batch_indices(n, 3, 1, 6), batch_indices(n, 3, 1, 5));
    }

    #[test]
    fn micro_batches_bucket_by_length_under_a_token_budget() {
        let s = [seq(10), seq(3), seq(4), seq(9), seq(30)];
        let refs: Vec<&Sequence> = s.iter().collect();
        let mbs = micro_batches(&refs, 20);
        let lens: Vec<Vec<usize>> = mbs
            .iter()
            .map(|m| m.iter().map(|s| s.ids.len()).collect())
            .collect();
        assert_eq!(lens, vec![vec![3, 4], vec![9, 10], vec![30]]);
    }
}
