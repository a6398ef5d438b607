//! `dnd bench`: dnd's throughput measured side by side with a reference implementation in the same
//! run, reported as ratios. Absolute times on the project's shared machines move by 20-30% between runs
//! (docs/stack.md), so only ratios taken under the same load mean anything; every record also holds the
//! load average.
//!
//! Each benchmark is a module with a config, a typed record and `run`: [`llm`] (base-model forward and
//! LoRA training against PyTorch and llama.cpp), [`finetune`] (dnd's LoRA fine-tuning step against
//! PyTorch+PEFT) and [`generate`] (prompts -> adapter latency against the official DnD decoder). The
//! records serialise to the keys of the committed files under `results/bench/` and `results/finetune/`,
//! which people and READMEs read; write them with [`sorted_json`]. The references are Python scripts
//! run through [`Reference`], found at run time.

pub mod ceiling;
pub mod finetune;
pub mod generate;
pub mod llm;

mod error;
mod reference;
mod stats;
mod table;

pub use error::{BenchError, Result};
pub use reference::Reference;

use candle_core::DType;
use dnd_llm::Llm;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// The LoRA a benchmark trains, as recorded. `Alpha` is an integer in `llm.json` (the paper default
/// the reference script hard-codes) and a float in `throughput.json` (a setting), as they were written.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct LoraShape<Alpha> {
    pub rank: usize,
    pub alpha: Alpha,
    pub targets: String,
}

/// Every benchmark adapts all seven projections, as the reference scripts do.
const ALL_TARGETS: &str = "q,k,v,o,gate,up,down";

/// `result` as a JSON value whose objects have their keys in alphabetical order: the layout of the
/// results files written before the records were typed (serde_json's map is sorted), so that a rerun
/// diffs against the committed file by value, not by key order.
pub fn sorted_json<T: Serialize>(result: &T) -> serde_json::Value {
    // Fails only for maps with non-string keys or a failing Serialize impl; the records have neither.
    serde_json::to_value(result).expect("benchmark records serialise to JSON")
}

/// Cores this process may use: recorded because every timing depends on it.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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

/// `n` fixed pseudo-random token ids below `vocab`: the content does not matter for speed, and the
/// reference scripts compute the same ids, so both sides see the same batch.
fn fixed_ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i as u64 * 2654435761) % vocab as u64) as u32)
        .collect()
}

/// The base model in f32, as the CLI's commands load it.
fn load_model(path: &Path) -> Result<Llm> {
    let t = Instant::now();
    let llm = Llm::load(path, DType::F32).map_err(|source| BenchError::Load {
        path: path.to_path_buf(),
        source,
    })?;
    tracing::info!(
        "loaded {} in {:.1}s",
        path.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(llm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_ids_follow_the_reference_scripts_formula() {
        let ids = fixed_ids(4, 1000);
        // (i * 2654435761) % 1000, as bench_torch.py computes it.
        assert_eq!(ids, [0, 761, 522, 283]);
        assert!(fixed_ids(100, 7).iter().all(|&i| i < 7));
    }

    #[test]
    fn sorted_json_orders_keys_alphabetically_at_every_level() {
        #[derive(Serialize)]
        struct Inner {
            z: u8,
            a: u8,
        }
        #[derive(Serialize)]
        struct Outer {
            zeta: Inner,
            alpha: f64,
        }
        let v = sorted_json(&Outer {
            zeta: Inner { z: 1, a: 2 },
            alpha: f64::NAN,
        });
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"alpha":null,"zeta":{"a":2,"z":1}}"#,
            "sorted keys, and NaN written as null as before"
        );
    }
}
