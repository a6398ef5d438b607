//! Can the condition tell the training tasks apart at all? A linear probe on the prompt encoder's
//! states, recorded in every `train.json`: if it cannot, no decoder can fit per-task adapters, and the
//! fault is the conditioning, not the generator.
//!
//! The probe is a nearest-centroid classifier (linear in the features) on each prompt's states averaged
//! over its word pieces. Each task's prompts are split in two halves by index parity; centroids come
//! from the even half, and the odd half is classified one prompt at a time and in batches of N (the
//! batch's features averaged, as a condition of N prompts pools them).

use crate::{Result, TrainError, TrainingTask};
use candle_core::{DType, Tensor};
use dnd_generate::draw;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Batches of N held-out prompts classified per task.
const BATCHES_PER_TASK: usize = 20;

/// Held-out accuracy of the nearest-centroid probe, and how far apart the task centroids are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionProbe {
    /// Share of single held-out prompts assigned to their own task.
    pub prompt_accuracy: f64,
    /// Share of held-out batches of `batch` prompts assigned to their own task.
    pub batch_accuracy: f64,
    pub batch: usize,
    /// Smallest distance between two task centroids over the mean distance of a prompt to its own
    /// centroid: below 1, tasks overlap prompt by prompt.
    pub separation: f64,
    /// `confusion[t][u]`: share of task t's held-out batches assigned to task u.
    pub confusion: Vec<Vec<f64>>,
}

/// Run the probe on `tasks`' prompt pools with batches of `batch` prompts. `None` for fewer than two
/// tasks, or when a task has fewer than two prompts (nothing to hold out).
pub fn condition_probe(tasks: &[TrainingTask], batch: usize) -> Result<Option<ConditionProbe>> {
    if tasks.len() < 2 || tasks.iter().any(|t| t.prompts.len() < 2) {
        return Ok(None);
    }
    let features = tasks
        .iter()
        .map(|t| t.prompts.iter().map(pooled).collect::<Result<Vec<_>>>())
        .collect::<Result<Vec<_>>>()?;
    let half = |f: &[Vec<f64>], parity: usize| -> Vec<Vec<f64>> {
        f.iter().skip(parity).step_by(2).cloned().collect()
    };
    let centroids: Vec<Vec<f64>> = features.iter().map(|f| mean(&half(f, 0))).collect();
    let classify = |x: &[f64]| -> usize {
        (0..centroids.len())
            .min_by(|&a, &b| dist(x, &centroids[a]).total_cmp(&dist(x, &centroids[b])))
            .expect("at least two tasks")
    };
    let (mut prompts, mut right) = (0, 0);
    let mut spread = 0.0;
    let mut confusion = vec![vec![0.0; tasks.len()]; tasks.len()];
    for (t, f) in features.iter().enumerate() {
        let test = half(f, 1);
        for x in &test {
            prompts += 1;
            right += usize::from(classify(x) == t);
            spread += dist(x, &centroids[t]);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(t as u64);
        for _ in 0..BATCHES_PER_TASK {
            let idx = draw(test.len(), batch, &mut rng)?;
            let pooled: Vec<Vec<f64>> = idx.iter().map(|&i| test[i].clone()).collect();
            confusion[t][classify(&mean(&pooled))] += 1.0;
        }
        confusion[t]
            .iter_mut()
            .for_each(|c| *c /= BATCHES_PER_TASK as f64);
    }
    let nearest = (0..centroids.len())
        .flat_map(|a| (a + 1..centroids.len()).map(move |b| (a, b)))
        .map(|(a, b)| dist(&centroids[a], &centroids[b]))
        .fold(f64::INFINITY, f64::min);
    Ok(Some(ConditionProbe {
        prompt_accuracy: right as f64 / prompts as f64,
        batch_accuracy: (0..tasks.len()).map(|t| confusion[t][t]).sum::<f64>() / tasks.len() as f64,
        batch,
        separation: nearest / (spread / prompts as f64),
        confusion,
    }))
}

/// A prompt's states `[len, C]` averaged over its word pieces.
fn pooled(states: &Tensor) -> Result<Vec<f64>> {
    if states.rank() != 2 || states.dim(0)? == 0 {
        return Err(TrainError::Data(format!(
            "prompt states {:?}: expected [len >= 1, C]",
            states.dims()
        )));
    }
    Ok(states.to_dtype(DType::F64)?.mean(0)?.to_vec1()?)
}

fn mean(xs: &[Vec<f64>]) -> Vec<f64> {
    let mut m = vec![0.0; xs[0].len()];
    for x in xs {
        for (a, b) in m.iter_mut().zip(x) {
            *a += b / xs.len() as f64;
        }
    }
    m
}

fn dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}
