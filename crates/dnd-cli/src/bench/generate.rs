//! `dnd bench generate`: generation latency (prompts -> adapter on disk) of `dnd generate` against the
//! official PyTorch decoder (jerryliang24/Drag-and-Drop-LLMs, read from a directory outside this
//! repository) built with the same stage cascade and kernel, plus decoder training steps/s and peak
//! memory, all in one run so that the ratios share the machine's load.

use super::{loadavg, median, median_time};
use crate::common::{python_reference, ModelArg};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use dnd_collect::CollectDefaults;
use dnd_decode::{DecoderConfig, GeneratorMeta, HyperConvDecoder, CPU_DEFAULT_INPUT};
use dnd_encode::{Encoder, EncoderConfig};
use dnd_generate::{Generator, GeneratorInfo};
use dnd_optim::{AdamW, AdamWConfig};
use dnd_tasks::task_prompts;
use dnd_tasks::Part;
use dnd_tokenize::{Factor, LoraTokenizer};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Generator directory (`dnd train`). Without it, an untrained CPU-default generator for --model is
    /// built in a temporary directory: latency does not depend on the weights.
    #[arg(long)]
    generator: Option<PathBuf>,
    /// Base model of the untrained generator (ignored with --generator).
    #[command(flatten)]
    model: ModelArg,
    /// Task whose `prompts` split supplies the N prompts (its first N).
    #[arg(long, default_value = "arc_easy")]
    task: String,
    #[arg(long, env = "DND_DATA", default_value = dnd_tasks::DEFAULT_DATA_DIR)]
    data: PathBuf,
    /// Timed repetitions of each measurement (after one warm-up); medians are reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Timed decoder training steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    train_steps: usize,
    /// Python with torch and sentence-transformers (scripts/reference/README.md); without it only dnd
    /// is measured.
    #[arg(long, env = "DND_REF_PYTHON")]
    python: Option<PathBuf>,
    /// Checkout of github.com/jerryliang24/Drag-and-Drop-LLMs (outside this repository), whose
    /// `HyperConvDecoder` the reference imports. Needed with --python.
    #[arg(long, env = "DND_OFFICIAL_SRC")]
    official_src: Option<PathBuf>,
    /// Result file (JSON); a Markdown table goes to stdout.
    #[arg(long, default_value = "results/bench/generate.json")]
    out: PathBuf,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if a.repeats == 0 || a.train_steps == 0 {
        bail!("--repeats and --train-steps must be at least 1");
    }
    let reference_src = match (&a.python, &a.official_src) {
        (Some(py), Some(src)) => Some((py.clone(), src.clone())),
        (Some(_), None) => bail!("--python needs --official-src (a checkout of the official code)"),
        _ => None,
    };
    let load_before = loadavg();
    let tmp = tempfile::tempdir()?;
    let gen_dir = match &a.generator {
        Some(d) => d.clone(),
        None => {
            let d = tmp.path().join("generator");
            untrained_generator(&a.model, &d)?;
            d
        }
    };
    let (config, _) = HyperConvDecoder::read_meta(&gen_dir)?;
    let info_path = gen_dir.join(dnd_generate::INFO_FILE);
    let info: GeneratorInfo = serde_json::from_str(
        &std::fs::read_to_string(&info_path)
            .with_context(|| format!("reading {}", info_path.display()))?,
    )?;
    let prompts = first_prompts(&a.task, &a.data, config.input()[0])?;
    let prompt_file = tmp.path().join("prompts.jsonl");
    let lines: Vec<String> = prompts.iter().map(|p| json!(p).to_string()).collect();
    std::fs::write(&prompt_file, lines.join("\n") + "\n")?;

    // The real binary first, while this process is still small: a child's peak RSS as the kernel
    // reports it is never below its parent's at the fork.
    let parent_rss_at_spawn = dnd_io::peak_rss_mb();
    let e2e = end_to_end(&gen_dir, &prompt_file, tmp.path(), a.repeats)?;
    let parts = in_process(&gen_dir, &info, &prompts, tmp.path(), a.repeats)?;
    let train = train_steps(&config, a.train_steps)?;
    let dnd = json!({
        "end_to_end_process_s_median": median(e2e.times.clone()),
        "end_to_end_process_s": e2e.times,
        "end_to_end_process_cpu_s_median": median(e2e.cpu.clone()),
        "end_to_end_process_cpu_s": e2e.cpu,
        "peak_rss_mb_generate_process": e2e.peak_rss_mb,
        "bench_process_rss_mb_at_spawn": parent_rss_at_spawn,
        "in_process": parts.summary,
        "train": train,
        "peak_rss_mb_bench_process": dnd_io::peak_rss_mb(),
    });

    let reference = match &reference_src {
        Some((py, src)) => Some(official(
            py,
            src,
            &config,
            &info,
            &prompts,
            &parts,
            tmp.path(),
            &a,
        )?),
        None => None,
    };
    let ratio = |d: &[&str], r: &[&str]| -> Value {
        let get = |v: &Value, path: &[&str]| path.iter().try_fold(v, |v, k| v.get(k))?.as_f64();
        match (get(&dnd, d), reference.as_ref().and_then(|r0| get(r0, r))) {
            (Some(x), Some(y)) if y > 0.0 => json!(x / y),
            _ => Value::Null,
        }
    };
    let result = json!({
        "bench": "generate",
        "generator": a.generator.as_ref().map_or("untrained CPU default (temporary)".into(), |g| g.display().to_string()),
        "decoder": config,
        "decoder_parameters": config.num_parameters(),
        "prompts": {"task": a.task, "count": prompts.len(), "encoder_max_len": info.encoder_max_len},
        "repeats": a.repeats,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "loadavg_1m_before_after": [load_before, loadavg()],
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "dnd": dnd,
        "official": reference,
        "ratio_dnd_over_official": {
            "end_to_end_process": ratio(&["end_to_end_process_s_median"], &["end_to_end_process_s_median"]),
            "end_to_end_process_cpu": ratio(&["end_to_end_process_cpu_s_median"], &["end_to_end_process_cpu_s_median"]),
            "load": ratio(&["in_process", "load_s"], &["full", "load_s"]),
            "per_adapter": ratio(&["in_process", "per_adapter_s"], &["full", "per_adapter_s_median"]),
            "encode": ratio(&["in_process", "encode_s"], &["full", "parts_median", "encode_s"]),
            "decoder_forward": ratio(&["in_process", "decoder_forward_s"], &["full", "decoder_forward_s_median"]),
            "detokenize_write": ratio(&["in_process", "detokenize_write_s"], &["full", "parts_median", "detokenize_write_s"]),
            "train_step_time": ratio(&["train", "step_s_median"], &["full", "train", "step_s_median"]),
            "peak_rss_generate_process": ratio(&["peak_rss_mb_generate_process"], &["peak_rss_mb_once_median"]),
        },
    });
    dnd_io::write_atomic(&a.out, &serde_json::to_string_pretty(&result)?)?;
    print_table(&result);
    println!("results written to {}", a.out.display());
    Ok(())
}

/// An untrained generator with the CPU-default decoder for `model` and the collection's LoRA
/// settings, as `dnd train` would start it.
fn untrained_generator(model: &ModelArg, dir: &Path) -> Result<()> {
    let path = model.path()?;
    let cfg = dnd_llm::ModelConfig::from_path(&path)?;
    let lora = CollectDefaults::collection().lora_config()?;
    let tok = LoraTokenizer::with_default_width(&cfg, &lora)?;
    let (h, w) = tok.token_shape();
    let decoder = HyperConvDecoder::new(
        DecoderConfig::cpu_default(CPU_DEFAULT_INPUT, [tok.num_tokens(), h, w]),
        DType::F32,
        0,
    )?;
    let info = GeneratorInfo {
        encoder_model_hash: dnd_assets::asset("minilm")?.sha256.to_string(),
        encoder_max_len: CPU_DEFAULT_INPUT[1],
        base_model: path.display().to_string(),
    };
    let meta = GeneratorMeta::new(&cfg, &lora, tok.chunk_width());
    dnd_generate::save(dir, &decoder, &meta, &info, None)?;
    Ok(())
}

/// The first `n` prompts of the task's `prompts` split (repeated if it has fewer).
fn first_prompts(task: &str, data: &Path, n: usize) -> Result<Vec<String>> {
    let pool = task_prompts(task, data, Part::Prompts)?;
    if pool.is_empty() {
        bail!("{task} has no prompts under {}", data.display());
    }
    Ok(pool.iter().cycle().take(n).cloned().collect())
}

struct EndToEnd {
    times: Vec<f64>,
    /// CPU seconds (user + system) of each timed run: less sensitive than wall time to other jobs
    /// on the machine, and the wall time an idle machine would approach (at most this, with 2 cores
    /// shared by the threads).
    cpu: Vec<f64>,
    peak_rss_mb: f64,
}

/// Wall time of the real `dnd generate` process (start, load, encode, decode, write), one warm-up run
/// (page cache) then `repeats` timed runs, and the largest peak RSS among them.
fn end_to_end(gen: &Path, prompts: &Path, tmp: &Path, repeats: usize) -> Result<EndToEnd> {
    let exe = std::env::current_exe()?;
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    for i in 0..=repeats {
        let before = children_usage();
        let t = Instant::now();
        let out = Command::new(&exe)
            .args(["generate", "--generator"])
            .arg(gen)
            .arg("--prompts")
            .arg(prompts)
            .arg("--out")
            .arg(tmp.join(format!("e2e-{i}")))
            .env("RUST_LOG", "warn")
            .output()
            .context("running dnd generate")?;
        let s = t.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "dnd generate failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if i > 0 {
            times.push(s);
            cpu.push(children_usage().cpu_s - before.cpu_s);
        }
    }
    Ok(EndToEnd {
        times,
        cpu,
        peak_rss_mb: children_usage().peak_rss_mb,
    })
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

/// Medians of the in-process stages, plus what the reference needs to mirror them.
struct Parts {
    summary: Value,
    spec_layout: Value,
    adapter_config: Value,
}

/// The stages of `dnd generate` timed one by one in this process (the same library calls): loading
/// the base config, generator and encoder; then per adapter encoding, decoder forward, de-tokenizing
/// and writing.
fn in_process(
    gen_dir: &Path,
    info: &GeneratorInfo,
    prompts: &[String],
    tmp: &Path,
    repeats: usize,
) -> Result<Parts> {
    let model_path = ModelArg {
        model: info.base_model.clone(),
    }
    .path()?;
    let mut load = Vec::new();
    let mut loaded = None;
    for _ in 0..=repeats {
        let t = Instant::now();
        let model = dnd_llm::ModelConfig::from_path(&model_path)?;
        let t_config = t.elapsed().as_secs_f64();
        let gen = Generator::load(gen_dir, &model, None)?;
        let t_gen = t.elapsed().as_secs_f64();
        let enc = Encoder::minilm(EncoderConfig {
            max_len: info.encoder_max_len,
            ..EncoderConfig::default()
        })?;
        let total = t.elapsed().as_secs_f64();
        load.push([t_config, t_gen - t_config, total - t_gen, total]);
        loaded = Some((gen, enc));
    }
    load.remove(0);
    let (gen, enc) = loaded.expect("at least one load");
    let mut stages = Vec::new();
    let adapter = tmp.join("in-process");
    for _ in 0..=repeats {
        let t = Instant::now();
        let states = enc.encode_each(prompts)?;
        let t_enc = t.elapsed().as_secs_f64();
        let hidden: Vec<_> = states.iter().map(|s| &s.hidden).collect();
        let cond = dnd_generate::condition(&hidden, gen.prompt_len())?.unsqueeze(0)?;
        let tokens = gen.decoder().forward(&cond)?.squeeze(0)?;
        let t_fwd = t.elapsed().as_secs_f64();
        let lora = gen.tokenizer().decode(&tokens)?;
        dnd_llm::peft::save(&lora, &adapter, &model_path.display().to_string())?;
        let total = t.elapsed().as_secs_f64();
        stages.push([t_enc, t_fwd - t_enc, total - t_fwd, total]);
    }
    stages.remove(0);
    let col = |rows: &[[f64; 4]], i: usize| median(rows.iter().map(|r| r[i]).collect());
    let summary = json!({
        "load_base_config_s": col(&load, 0),
        "load_generator_s": col(&load, 1),
        "load_encoder_s": col(&load, 2),
        "load_s": col(&load, 3),
        "encode_s": col(&stages, 0),
        "decoder_forward_s": col(&stages, 1),
        "detokenize_write_s": col(&stages, 2),
        "per_adapter_s": col(&stages, 3),
        "peak_rss_mb_after_generation": dnd_io::peak_rss_mb(),
    });
    let adapter_config: Value = serde_json::from_str(&std::fs::read_to_string(
        adapter.join(dnd_llm::peft::CONFIG_FILE),
    )?)?;
    Ok(Parts {
        summary,
        spec_layout: layout(gen.tokenizer()),
        adapter_config,
    })
}

/// The adapter layout for the reference's de-tokenizer: rank, chunk width and every factor in token
/// order (PEFT key, length along the chunked axis, and whether it is B, stored transposed).
fn layout(tok: &LoraTokenizer) -> Value {
    let mut factors: Vec<Value> = Vec::new();
    let mut last = None;
    for t in tok.tokens() {
        if last == Some((t.layer, t.target, t.factor)) {
            continue;
        }
        last = Some((t.layer, t.target, t.factor));
        let (inp, out) = tok.model_config().module_shape(t.target);
        let (which, len) = match t.factor {
            Factor::A => ('A', inp),
            Factor::B => ('B', out),
        };
        factors.push(json!({
            "key": dnd_llm::peft::key(t.layer, t.target, which),
            "len": len,
            "transpose": t.factor == Factor::B,
        }));
    }
    json!({
        "rank": tok.lora_config().rank,
        "chunk_width": tok.chunk_width(),
        "factors": factors,
    })
}

/// Seconds per decoder training step (forward, MSE to a random target, backward, AdamW), batch 1, on
/// a freshly initialised decoder of the same config.
fn train_steps(config: &DecoderConfig, steps: usize) -> Result<Value> {
    let dec = HyperConvDecoder::new(config.clone(), DType::F32, 0)?;
    let [n, h, w] = config.input();
    let [n2, h2, w2] = config.output();
    let x = Tensor::randn(0f32, 1.0, (1, n, h, w), &Device::Cpu)?;
    let target = Tensor::randn(0f32, 1.0, (1, n2, h2, w2), &Device::Cpu)?;
    let vars = dec.vars();
    let mut opt = AdamW::new(vars.clone(), AdamWConfig::default())?;
    let mut losses = Vec::new();
    let (med, times) = median_time(steps, || {
        let loss = (dec.forward(&x)? - &target)?.sqr()?.mean_all()?;
        let store = loss.backward()?;
        let grads = vars
            .iter()
            .map(|v| {
                store
                    .get(v)
                    .cloned()
                    .context("a decoder weight has no gradient")
            })
            .collect::<Result<Vec<_>>>()?;
        opt.step(&grads, 1e-4)?;
        losses.push(loss.to_scalar::<f32>()?);
        Ok(())
    })?;
    Ok(json!({
        "step_s_median": med,
        "step_s": times,
        "steps_per_s": 1.0 / med,
        "loss_first": losses.first(),
        "loss_last": losses.last(),
    }))
}

/// The official decoder through `bench_official_generate.py`: `repeats` whole processes generating
/// one adapter each (timed here, like `dnd generate`), then one process with the in-process breakdown
/// and training steps.
#[allow(clippy::too_many_arguments)]
fn official(
    python: &Path,
    src: &Path,
    config: &DecoderConfig,
    info: &GeneratorInfo,
    prompts: &[String],
    parts: &Parts,
    tmp: &Path,
    a: &GenerateArgs,
) -> Result<Value> {
    let encoder_dir = dnd_assets::Cache::new().ensure(dnd_assets::asset("minilm")?)?;
    let mut spec = parts.spec_layout.clone();
    let extra = json!({
        "stages": config.stages,
        "kernel": config.kernel,
        "prompts": prompts,
        "max_len": info.encoder_max_len,
        "encoder_dir": encoder_dir,
        "adapter_config": parts.adapter_config,
        "repeats": a.repeats,
        "train_steps": a.train_steps,
    });
    for (k, v) in extra.as_object().expect("an object") {
        spec[k] = v.clone();
    }
    let spec_path = tmp.join("official_spec.json");
    std::fs::write(&spec_path, serde_json::to_string(&spec)?)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let args = |mode: &str| -> Vec<String> {
        vec![
            "--spec".into(),
            spec_path.display().to_string(),
            "--official".into(),
            src.display().to_string(),
            "--mode".into(),
            mode.into(),
            "--threads".into(),
            threads.to_string(),
        ]
    };
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    let mut rss = Vec::new();
    for i in 0..=a.repeats {
        let before = children_usage();
        let t = Instant::now();
        let once = python_reference(python, "bench_official_generate.py", &args("once"))?;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
            cpu.push(children_usage().cpu_s - before.cpu_s);
            rss.push(once["peak_rss_mb"].as_f64().unwrap_or(f64::NAN));
        }
    }
    let full = python_reference(python, "bench_official_generate.py", &args("full"))?;
    Ok(json!({
        "end_to_end_process_s_median": median(times.clone()),
        "end_to_end_process_s": times,
        "end_to_end_process_cpu_s_median": median(cpu.clone()),
        "end_to_end_process_cpu_s": cpu,
        "peak_rss_mb_once_median": median(rss),
        "full": full,
    }))
}

fn print_table(r: &Value) {
    let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.3}"));
    let d = &r["dnd"];
    let o = &r["official"];
    let q = &r["ratio_dnd_over_official"];
    let ratio = |k: &str| q[k].as_f64().map_or("-".into(), |x| format!("{x:.2}x"));
    println!(
        "| generation, {} decoder layers, kernel {} (load average {}) | dnd | official PyTorch | dnd / official |",
        r["decoder"]["stages"]
            .as_array()
            .map_or(0, |s| s.len().saturating_sub(1)),
        r["decoder"]["kernel"],
        r["loadavg_1m_before_after"][0]
    );
    println!("|---|---|---|---|");
    let rows: [(&str, &Value, &Value, &str); 9] = [
        (
            "end to end, whole process (s, median)",
            &d["end_to_end_process_s_median"],
            &o["end_to_end_process_s_median"],
            "end_to_end_process",
        ),
        (
            "  its CPU time, user + system (s, median)",
            &d["end_to_end_process_cpu_s_median"],
            &o["end_to_end_process_cpu_s_median"],
            "end_to_end_process_cpu",
        ),
        (
            "load in process (s)",
            &d["in_process"]["load_s"],
            &o["full"]["load_s"],
            "load",
        ),
        (
            "per adapter in process (s)",
            &d["in_process"]["per_adapter_s"],
            &o["full"]["per_adapter_s_median"],
            "per_adapter",
        ),
        (
            "  encode N prompts (s)",
            &d["in_process"]["encode_s"],
            &o["full"]["parts_median"]["encode_s"],
            "encode",
        ),
        (
            "  decoder forward (s)",
            &d["in_process"]["decoder_forward_s"],
            &o["full"]["decoder_forward_s_median"],
            "decoder_forward",
        ),
        (
            "  de-tokenize + write (s)",
            &d["in_process"]["detokenize_write_s"],
            &o["full"]["parts_median"]["detokenize_write_s"],
            "detokenize_write",
        ),
        (
            "decoder training step, batch 1 (s)",
            &d["train"]["step_s_median"],
            &o["full"]["train"]["step_s_median"],
            "train_step_time",
        ),
        (
            "peak RSS of one generation process (MiB)",
            &d["peak_rss_mb_generate_process"],
            &o["peak_rss_mb_once_median"],
            "peak_rss_generate_process",
        ),
    ];
    for (name, dv, ov, k) in rows {
        println!("| {name} | {} | {} | {} |", f(dv), f(ov), ratio(k));
    }
}
