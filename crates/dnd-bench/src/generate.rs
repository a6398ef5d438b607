//! `dnd bench generate`: generation latency (prompts -> adapter on disk) of `dnd generate` against the
//! official PyTorch decoder (jerryliang24/Drag-and-Drop-LLMs, read from a checkout outside this
//! repository) built with the same stage cascade and kernel, plus decoder training steps/s and peak
//! memory, all in one run so that the ratios share the machine's load.

mod dnd;
mod official;
mod record;

pub use record::{
    DecoderTrain, GenerateBench, GenerateDnd, GenerateRatios, InProcess, Official, OfficialFull,
    OfficialParts, ProcessTimes, PromptSet,
};

use crate::{table, BenchError, Reference, Result};
use dnd_decode::{DecoderConfig, HyperConvDecoder};
use dnd_generate::GeneratorInfo;
use dnd_tasks::{task_prompts, Part};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to measure.
#[derive(Clone, Debug)]
pub struct GenerateBenchConfig {
    /// A generator directory (`dnd train`). Without it, an untrained CPU-default generator for
    /// `base_model` is built in a temporary directory: latency does not depend on the weights.
    pub generator: Option<PathBuf>,
    /// The base model the adapters are for, resolved to a file or directory by the caller: the one
    /// the generator's info names, or the one to build the untrained generator for.
    pub base_model: PathBuf,
    /// Task whose `prompts` split supplies the prompts (its first N, N the decoder's input).
    pub task: String,
    pub data: PathBuf,
    /// Timed repetitions of each measurement (after one warm-up); medians are reported.
    pub repeats: usize,
    /// Timed decoder training steps (after one warm-up step).
    pub train_steps: usize,
    /// Without it only dnd is measured.
    pub official: Option<OfficialReference>,
    /// The `dnd` binary whose `generate` is timed as a whole process (the CLI passes itself).
    pub dnd_exe: PathBuf,
    /// The command line, recorded to rerun it.
    pub command: String,
}

/// The official decoder's side: the Python running `bench_official_generate.py`, and the checkout
/// of github.com/jerryliang24/Drag-and-Drop-LLMs whose `HyperConvDecoder` it imports.
#[derive(Clone, Debug)]
pub struct OfficialReference {
    pub reference: Reference,
    pub source: PathBuf,
}

/// What both sides generate from.
struct Setup<'a> {
    config: &'a GenerateBenchConfig,
    gen_dir: PathBuf,
    decoder: DecoderConfig,
    info: GeneratorInfo,
    prompts: Vec<String>,
    /// A scratch directory for adapters, prompts and the reference's spec.
    tmp: &'a Path,
}

/// dnd first (its end-to-end processes while this one is still small), then the official decoder.
pub fn run(config: &GenerateBenchConfig) -> Result<GenerateBench> {
    if config.repeats == 0 || config.train_steps == 0 {
        return Err(BenchError::Config(
            "--repeats and --train-steps must be at least 1".into(),
        ));
    }
    if let Some(o) = &config.official {
        o.reference.script(official::SCRIPT)?;
    }
    let load_before = crate::loadavg();
    let tmp = tempfile::tempdir().map_err(dnd_io::io_err::<BenchError>(&std::env::temp_dir()))?;
    let setup = setup(config, tmp.path())?;
    let measured = dnd::measure(&setup)?;
    let official = match &config.official {
        Some(o) => Some(official::measure(o, &setup, &measured)?),
        None => None,
    };
    Ok(GenerateBench {
        bench: "generate".into(),
        generator: config.generator.as_ref().map_or_else(
            || "untrained CPU default (temporary)".into(),
            |g| g.display().to_string(),
        ),
        decoder_parameters: setup.decoder.num_parameters(),
        decoder: setup.decoder,
        prompts: PromptSet {
            task: config.task.clone(),
            count: setup.prompts.len(),
            encoder_max_len: setup.info.encoder_max_len,
        },
        repeats: config.repeats,
        threads: crate::threads(),
        loadavg_1m_before_after: [load_before, crate::loadavg()],
        command: config.command.clone(),
        ratio_dnd_over_official: GenerateRatios::new(&measured.record, official.as_ref()),
        dnd: measured.record,
        official,
    })
}

/// The generator (built untrained in `tmp` if none was given), its decoder and info, and its prompts.
fn setup<'a>(config: &'a GenerateBenchConfig, tmp: &'a Path) -> Result<Setup<'a>> {
    let gen_dir = match &config.generator {
        Some(d) => d.clone(),
        None => {
            let d = tmp.join("generator");
            dnd::untrained_generator(&config.base_model, &d)?;
            d
        }
    };
    let (decoder, _) = HyperConvDecoder::read_meta(&gen_dir)?;
    let info = dnd_generate::read_info(&gen_dir)?;
    let prompts = first_prompts(&config.task, &config.data, decoder.input()[0])?;
    Ok(Setup {
        config,
        gen_dir,
        decoder,
        info,
        prompts,
        tmp,
    })
}

/// The first `n` prompts of the task's `prompts` split (repeated if it has fewer).
fn first_prompts(task: &str, data: &Path, n: usize) -> Result<Vec<String>> {
    let pool = task_prompts(task, data, Part::Prompts)?;
    if pool.is_empty() {
        return Err(BenchError::NoPrompts {
            task: task.into(),
            data: data.into(),
        });
    }
    Ok(pool.iter().cycle().take(n).cloned().collect())
}

/// Run a whole process through `run` once as a warm-up (page cache), then `repeats` times timed:
/// wall seconds, CPU seconds of the children, and what each timed run returned.
fn time_processes<T>(
    repeats: usize,
    mut run: impl FnMut(usize) -> Result<T>,
) -> Result<(ProcessTimes, Vec<T>)> {
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    let mut outputs = Vec::new();
    for i in 0..=repeats {
        let before = children_usage();
        let t = Instant::now();
        let out = run(i)?;
        let s = t.elapsed().as_secs_f64();
        if i > 0 {
            times.push(s);
            cpu.push(children_usage().cpu_s - before.cpu_s);
            outputs.push(out);
        }
    }
    Ok((ProcessTimes::new(times, cpu), outputs))
}

/// What the waited-for children used so far (getrusage RUSAGE_CHILDREN): CPU seconds, summed, and the
/// largest peak RSS among them.
struct Usage {
    cpu_s: f64,
    peak_rss_mb: f64,
}

fn children_usage() -> Usage {
    // SAFETY: getrusage only writes into the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) } != 0 {
        return Usage {
            cpu_s: f64::NAN,
            peak_rss_mb: f64::NAN,
        };
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Usage {
        cpu_s: secs(u.ru_utime) + secs(u.ru_stime),
        peak_rss_mb: u.ru_maxrss as f64 / 1024.0,
    }
}

impl GenerateBench {
    /// The Markdown summary: each measurement on both sides and dnd / official.
    pub fn table(&self) -> String {
        let mut t = format!(
            "| generation, {} decoder layers, kernel {} (load average {}) | dnd | official PyTorch | \
             dnd / official |\n|---|---|---|---|\n",
            self.decoder.stages.len().saturating_sub(1),
            self.decoder.kernel,
            serde_json::Value::from(self.loadavg_1m_before_after[0])
        );
        for (name, dnd, official, ratio) in self.rows() {
            t += &format!(
                "| {name} | {} | {} | {} |\n",
                table::value(Some(dnd), 3),
                table::value(official, 3),
                table::times(ratio)
            );
        }
        t
    }

    /// The table's rows: name, dnd, official, ratio.
    fn rows(&self) -> [(&'static str, f64, Option<f64>, Option<f64>); 9] {
        let (d, p, r) = (
            &self.dnd,
            &self.dnd.in_process,
            &self.ratio_dnd_over_official,
        );
        let o = |f: fn(&Official) -> f64| self.official.as_ref().map(f);
        [
            (
                "end to end, whole process (s, median)",
                d.process.end_to_end_process_s_median,
                o(|o| o.process.end_to_end_process_s_median),
                r.end_to_end_process,
            ),
            (
                "  its CPU time, user + system (s, median)",
                d.process.end_to_end_process_cpu_s_median,
                o(|o| o.process.end_to_end_process_cpu_s_median),
                r.end_to_end_process_cpu,
            ),
            (
                "load in process (s)",
                p.load_s,
                o(|o| o.full.load_s),
                r.load,
            ),
            (
                "per adapter in process (s)",
                p.per_adapter_s,
                o(|o| o.full.per_adapter_s_median),
                r.per_adapter,
            ),
            (
                "  encode N prompts (s)",
                p.encode_s,
                o(|o| o.full.parts_median.encode_s),
                r.encode,
            ),
            (
                "  decoder forward (s)",
                p.decoder_forward_s,
                o(|o| o.full.decoder_forward_s_median),
                r.decoder_forward,
            ),
            (
                "  de-tokenize + write (s)",
                p.detokenize_write_s,
                o(|o| o.full.parts_median.detokenize_write_s),
                r.detokenize_write,
            ),
            (
                "decoder training step, batch 1 (s)",
                d.train.step_s_median,
                o(|o| o.full.train.step_s_median),
                r.train_step_time,
            ),
            (
                "peak RSS of one generation process (MiB)",
                d.peak_rss_mb_generate_process,
                o(|o| o.peak_rss_mb_once_median),
                r.peak_rss_generate_process,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const COMMITTED: &str = include_str!("../../../results/bench/generate.json");
    const DND_ONLY: &str = include_str!("../../../results/bench/generate_idle_dnd.json");

    #[test]
    fn the_record_keeps_the_keys_and_values_of_the_committed_files() {
        for text in [COMMITTED, DND_ONLY] {
            let committed: Value = serde_json::from_str(text).unwrap();
            let record: GenerateBench = serde_json::from_value(committed.clone()).unwrap();
            assert_eq!(crate::sorted_json(&record), committed);
        }
    }

    #[test]
    fn ratios_are_recomputed_from_both_sides() {
        for text in [COMMITTED, DND_ONLY] {
            let record: GenerateBench = serde_json::from_str(text).unwrap();
            let again =
                crate::sorted_json(&GenerateRatios::new(&record.dnd, record.official.as_ref()));
            let committed = crate::sorted_json(&record.ratio_dnd_over_official);
            let (again, committed) = (again.as_object().unwrap(), committed.as_object().unwrap());
            assert_eq!(again.len(), committed.len());
            for (k, v) in committed {
                match (v.as_f64(), again[k].as_f64()) {
                    // Parsing the committed decimals may be one unit in the last place off.
                    (Some(c), Some(a)) => assert!((a - c).abs() < 1e-12, "{k}: {a} vs {c}"),
                    _ => assert_eq!(&again[k], v, "{k}"),
                }
            }
        }
        let record: GenerateBench = serde_json::from_str(DND_ONLY).unwrap();
        assert!(crate::sorted_json(&record.ratio_dnd_over_official)
            .as_object()
            .unwrap()
            .values()
            .all(Value::is_null));
    }

    #[test]
    fn the_table_shows_both_sides_per_measurement() {
        let t = serde_json::from_str::<GenerateBench>(COMMITTED)
            .unwrap()
            .table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 11);
        assert!(lines[0]
            .starts_with("| generation, 3 decoder layers, kernel 3 (load average 2.08) | dnd |"));
        assert_eq!(
            lines[2],
            "| end to end, whole process (s, median) | 0.887 | 9.567 | 0.09x |"
        );
        assert_eq!(
            lines[10],
            "| peak RSS of one generation process (MiB) | 440.156 | 1069.684 | 0.41x |"
        );
        let t = serde_json::from_str::<GenerateBench>(DND_ONLY)
            .unwrap()
            .table();
        assert!(t.lines().skip(2).all(|l| l.ends_with("| - | - |")), "{t}");
    }

    #[test]
    fn processes_are_timed_after_a_warm_up() {
        let mut runs = Vec::new();
        let (times, outputs) = time_processes(3, |i| {
            runs.push(i);
            Ok(i * 10)
        })
        .unwrap();
        assert_eq!(runs, [0, 1, 2, 3]);
        assert_eq!(outputs, [10, 20, 30], "the warm-up's output is dropped");
        assert_eq!(times.end_to_end_process_s.len(), 3);
        assert_eq!(times.end_to_end_process_cpu_s.len(), 3);
        assert_eq!(
            times.end_to_end_process_s_median,
            crate::stats::median(&times.end_to_end_process_s)
        );
    }
}
