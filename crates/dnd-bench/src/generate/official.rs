//! The official decoder's side of `dnd bench generate`, through `bench_official_generate.py`.

use super::dnd::{Layout, Measured};
use super::{time_processes, Official, OfficialFull, OfficialReference, Setup};
use crate::stats::median;
use crate::{BenchError, Result};
use dnd_decode::Stage;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

pub(super) const SCRIPT: &str = "bench_official_generate.py";

/// What the script builds and generates: dnd's adapter layout, decoder shape and prompts.
#[derive(Serialize)]
struct Spec<'a> {
    #[serde(flatten)]
    layout: &'a Layout,
    stages: &'a [Stage],
    kernel: usize,
    prompts: &'a [String],
    max_len: usize,
    encoder_dir: &'a Path,
    adapter_config: &'a Value,
    repeats: usize,
    train_steps: usize,
}

/// `--mode once`'s record, of which only the peak memory is compared.
#[derive(Deserialize)]
struct Once {
    peak_rss_mb: f64,
}

/// `repeats` whole processes generating one adapter each (timed here, like `dnd generate`), then one
/// process with the in-process breakdown and training steps.
pub(super) fn measure(o: &OfficialReference, s: &Setup<'_>, dnd: &Measured) -> Result<Official> {
    let encoder_dir = dnd_assets::Cache::new().ensure(dnd_assets::asset("minilm")?)?;
    let spec_path = s.tmp.join("official_spec.json");
    let spec = Spec {
        layout: &dnd.layout,
        stages: &s.decoder.stages,
        kernel: s.decoder.kernel,
        prompts: &s.prompts,
        max_len: s.info.encoder_max_len,
        encoder_dir: &encoder_dir,
        adapter_config: &dnd.adapter_config,
        repeats: s.config.repeats,
        train_steps: s.config.train_steps,
    };
    dnd_io::write_json::<_, BenchError>(&spec_path, &spec)?;
    let threads = crate::threads().to_string();
    let args = |mode: &str| -> Vec<String> {
        [
            ("--spec", spec_path.display().to_string()),
            ("--official", o.source.display().to_string()),
            ("--mode", mode.into()),
            ("--threads", threads.clone()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect()
    };
    let (process, once) = time_processes(s.config.repeats, |_| {
        o.reference.run::<Once>(SCRIPT, &args("once"))
    })?;
    let rss: Vec<f64> = once.iter().map(|r| r.peak_rss_mb).collect();
    let full = o.reference.run::<OfficialFull>(SCRIPT, &args("full"))?;
    Ok(Official {
        process,
        peak_rss_mb_once_median: median(&rss),
        full,
    })
}

#[cfg(test)]
mod tests {
    use super::super::dnd::FactorLayout;
    use super::*;

    #[test]
    fn the_spec_has_every_field_the_script_reads_at_the_top_level() {
        let layout = Layout {
            rank: 8,
            chunk_width: 194,
            factors: vec![FactorLayout {
                key: "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".into(),
                len: 576,
                transpose: false,
            }],
        };
        let prompts = ["a question".to_string()];
        let adapter_config = serde_json::json!({"r": 8});
        let spec = Spec {
            layout: &layout,
            stages: &[[32, 32, 384], [1590, 10, 194]],
            kernel: 3,
            prompts: &prompts,
            max_len: 32,
            encoder_dir: Path::new("/cache/minilm"),
            adapter_config: &adapter_config,
            repeats: 5,
            train_steps: 3,
        };
        let v = serde_json::to_value(&spec).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        // The keys bench_official_generate.py indexes, with the layout flattened beside the rest.
        assert_eq!(
            keys,
            [
                "adapter_config",
                "chunk_width",
                "encoder_dir",
                "factors",
                "kernel",
                "max_len",
                "prompts",
                "rank",
                "repeats",
                "stages",
                "train_steps"
            ]
        );
        assert_eq!(v["factors"][0]["len"], 576);
        assert_eq!(v["factors"][0]["transpose"], false);
        assert_eq!(v["stages"][1], serde_json::json!([1590, 10, 194]));
        assert_eq!(v["encoder_dir"], "/cache/minilm");
    }
}
