//! The record of `dnd bench generate` (`results/bench/generate.json`).

use crate::stats::{median, ratio};
use dnd_decode::DecoderConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `results/bench/generate.json`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct GenerateBench {
    /// Always `generate`.
    pub bench: String,
    /// The generator directory, or a note that it was an untrained temporary one.
    pub generator: String,
    pub decoder: DecoderConfig,
    pub decoder_parameters: usize,
    pub prompts: PromptSet,
    pub repeats: usize,
    pub threads: usize,
    pub loadavg_1m_before_after: [Option<f64>; 2],
    /// The command line of the run, to rerun it.
    pub command: String,
    pub dnd: GenerateDnd,
    /// Null without the reference.
    pub official: Option<Official>,
    pub ratio_dnd_over_official: GenerateRatios,
}

/// The prompts every adapter is generated from.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct PromptSet {
    pub task: String,
    pub count: usize,
    pub encoder_max_len: usize,
}

/// Wall and CPU seconds of whole processes generating one adapter each, timed from outside.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct ProcessTimes {
    pub end_to_end_process_s_median: f64,
    pub end_to_end_process_s: Vec<f64>,
    pub end_to_end_process_cpu_s_median: f64,
    /// CPU seconds (user + system) of each run: less sensitive than wall time to other jobs on the
    /// machine, and the wall time an idle machine would approach (at most this, with 2 cores shared by
    /// the threads).
    pub end_to_end_process_cpu_s: Vec<f64>,
}

impl ProcessTimes {
    pub(super) fn new(times: Vec<f64>, cpu: Vec<f64>) -> Self {
        Self {
            end_to_end_process_s_median: median(&times),
            end_to_end_process_s: times,
            end_to_end_process_cpu_s_median: median(&cpu),
            end_to_end_process_cpu_s: cpu,
        }
    }
}

/// dnd's side.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct GenerateDnd {
    /// The real `dnd generate` binary, start to exit.
    #[serde(flatten)]
    pub process: ProcessTimes,
    /// The largest among those processes (getrusage of the children).
    pub peak_rss_mb_generate_process: f64,
    /// The floor under that peak: a child's peak RSS as the kernel reports it is never below its
    /// parent's at the fork.
    pub bench_process_rss_mb_at_spawn: f64,
    pub in_process: InProcess,
    pub train: DecoderTrain,
    pub peak_rss_mb_bench_process: f64,
}

/// Medians of `dnd generate`'s stages timed one by one inside this process.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct InProcess {
    pub load_base_config_s: f64,
    pub load_generator_s: f64,
    pub load_encoder_s: f64,
    /// The three loads together.
    pub load_s: f64,
    pub encode_s: f64,
    pub decoder_forward_s: f64,
    pub detokenize_write_s: f64,
    /// Encode, decoder forward, de-tokenize and write together.
    pub per_adapter_s: f64,
    pub peak_rss_mb_after_generation: f64,
}

/// Decoder training steps (forward, MSE to a random target, backward, AdamW; batch 1). The reference
/// script records the same fields.
#[derive(Debug, Serialize, Deserialize)]
pub struct DecoderTrain {
    pub step_s_median: f64,
    pub step_s: Vec<f64>,
    pub steps_per_s: f64,
    pub loss_first: Option<f64>,
    pub loss_last: Option<f64>,
}

/// The official decoder's side.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct Official {
    /// `bench_official_generate.py --mode once`, start to exit.
    #[serde(flatten)]
    pub process: ProcessTimes,
    /// As each of those processes measured itself (VmHWM).
    pub peak_rss_mb_once_median: f64,
    /// `--mode full`: the in-process breakdown and training steps.
    pub full: OfficialFull,
}

/// `bench_official_generate.py --mode full`'s record: the fields compared, and the rest kept as
/// written.
#[derive(Debug, Serialize, Deserialize)]
pub struct OfficialFull {
    pub load_s: f64,
    pub per_adapter_s_median: f64,
    pub decoder_forward_s_median: f64,
    pub parts_median: OfficialParts,
    pub train: DecoderTrain,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Medians of the official generation's stages.
#[derive(Debug, Serialize, Deserialize)]
pub struct OfficialParts {
    pub encode_s: f64,
    pub decoder_forward_s: f64,
    pub detokenize_write_s: f64,
}

/// dnd over official, per measurement (times: below 1 is dnd faster); null without the reference.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct GenerateRatios {
    pub end_to_end_process: Option<f64>,
    pub end_to_end_process_cpu: Option<f64>,
    pub load: Option<f64>,
    pub per_adapter: Option<f64>,
    pub encode: Option<f64>,
    pub decoder_forward: Option<f64>,
    pub detokenize_write: Option<f64>,
    pub train_step_time: Option<f64>,
    pub peak_rss_generate_process: Option<f64>,
}

impl GenerateRatios {
    pub(super) fn new(d: &GenerateDnd, official: Option<&Official>) -> Self {
        let o = |f: fn(&Official) -> f64| official.map(f);
        let p = &d.in_process;
        Self {
            end_to_end_process: ratio(
                d.process.end_to_end_process_s_median,
                o(|o| o.process.end_to_end_process_s_median),
            ),
            end_to_end_process_cpu: ratio(
                d.process.end_to_end_process_cpu_s_median,
                o(|o| o.process.end_to_end_process_cpu_s_median),
            ),
            load: ratio(p.load_s, o(|o| o.full.load_s)),
            per_adapter: ratio(p.per_adapter_s, o(|o| o.full.per_adapter_s_median)),
            encode: ratio(p.encode_s, o(|o| o.full.parts_median.encode_s)),
            decoder_forward: ratio(p.decoder_forward_s, o(|o| o.full.decoder_forward_s_median)),
            detokenize_write: ratio(
                p.detokenize_write_s,
                o(|o| o.full.parts_median.detokenize_write_s),
            ),
            train_step_time: ratio(d.train.step_s_median, o(|o| o.full.train.step_s_median)),
            peak_rss_generate_process: ratio(
                d.peak_rss_mb_generate_process,
                o(|o| o.peak_rss_mb_once_median),
            ),
        }
    }
}
