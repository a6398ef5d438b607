//! dnd's side of `dnd bench generate`: the real binary end to end, its stages in process, and decoder
//! training steps.

use super::{children_usage, time_processes, DecoderTrain, GenerateDnd, InProcess, Setup};
use crate::stats::{median, median_time};
use crate::{BenchError, Result};
use candle_core::{DType, Device, Tensor};
use dnd_collect::CollectDefaults;
use dnd_decode::{DecoderConfig, GeneratorMeta, HyperConvDecoder, CPU_DEFAULT_INPUT};
use dnd_encode::{Encoder, EncoderConfig};
use dnd_generate::{Generator, GeneratorInfo};
use dnd_llm::ModelConfig;
use dnd_optim::{AdamW, AdamWConfig};
use dnd_tokenize::{Factor, LoraTokenizer};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// dnd's record, and what the official side needs to mirror dnd's adapters.
pub(super) struct Measured {
    pub(super) record: GenerateDnd,
    pub(super) layout: Layout,
    /// The `adapter_config.json` dnd wrote, for the official writer to write as is.
    pub(super) adapter_config: Value,
}

/// The adapter layout for the official side's de-tokenizer: rank, chunk width and every factor in
/// token order.
#[derive(Serialize)]
pub(super) struct Layout {
    pub(super) rank: usize,
    pub(super) chunk_width: usize,
    pub(super) factors: Vec<FactorLayout>,
}

/// One LoRA factor: its PEFT key, its length along the chunked axis, and whether it is B (stored
/// transposed).
#[derive(Serialize)]
pub(super) struct FactorLayout {
    pub(super) key: String,
    pub(super) len: usize,
    pub(super) transpose: bool,
}

/// An untrained generator with the CPU-default decoder for `model` and the collection's LoRA
/// settings, as `dnd train` would start it.
pub(super) fn untrained_generator(model: &Path, dir: &Path) -> Result<()> {
    let cfg = ModelConfig::from_path(model)?;
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
        base_model: model.display().to_string(),
    };
    let meta = GeneratorMeta::new(&cfg, &lora, tok.chunk_width());
    dnd_generate::save(dir, &decoder, &meta, &info, None, None)?;
    Ok(())
}

/// The real binary first, while this process is still small: a child's peak RSS as the kernel
/// reports it is never below its parent's at the fork. Then the stages in process, then training.
pub(super) fn measure(s: &Setup<'_>) -> Result<Measured> {
    let prompt_file = s.tmp.join("prompts.jsonl");
    let lines: Vec<String> = s
        .prompts
        .iter()
        .map(|p| Value::from(p.as_str()).to_string())
        .collect();
    dnd_io::write_atomic(&prompt_file, lines.join("\n") + "\n")?;
    let bench_process_rss_mb_at_spawn = dnd_io::peak_rss_mb();
    tracing::info!("timing `dnd generate` as a whole process");
    let (process, _) = time_processes(s.config.repeats, |i| {
        run_generate(
            &s.config.dnd_exe,
            &s.gen_dir,
            &prompt_file,
            &s.tmp.join(format!("e2e-{i}")),
        )
    })?;
    let peak_rss_mb_generate_process = children_usage().peak_rss_mb;
    tracing::info!("timing `dnd generate`'s stages in process");
    let stages = in_process(s)?;
    tracing::info!("timing decoder training steps");
    let train = train_steps(&s.decoder, s.config.train_steps)?;
    Ok(Measured {
        record: GenerateDnd {
            process,
            peak_rss_mb_generate_process,
            bench_process_rss_mb_at_spawn,
            in_process: stages.summary,
            train,
            peak_rss_mb_bench_process: dnd_io::peak_rss_mb(),
        },
        layout: stages.layout,
        adapter_config: stages.adapter_config,
    })
}

/// One `dnd generate` process (start, load, encode, decode, write).
fn run_generate(exe: &Path, gen: &Path, prompts: &Path, out: &Path) -> Result<()> {
    let output = Command::new(exe)
        .args(["generate", "--generator"])
        .arg(gen)
        .arg("--prompts")
        .arg(prompts)
        .arg("--out")
        .arg(out)
        .env("RUST_LOG", "warn")
        .output()
        .map_err(|source| BenchError::Spawn {
            program: exe.to_path_buf(),
            source,
        })?;
    if !output.status.success() {
        return Err(BenchError::Failed {
            what: "dnd generate".into(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(())
}

/// The in-process medians and what the official side mirrors.
struct Stages {
    summary: InProcess,
    layout: Layout,
    adapter_config: Value,
}

/// The stages of `dnd generate` timed one by one in this process (the same library calls): loading
/// the base config, generator and encoder; then per adapter encoding, decoder forward, de-tokenizing
/// and writing. Each is done once untimed first.
fn in_process(s: &Setup<'_>) -> Result<Stages> {
    let base = &s.config.base_model;
    let load = || time_loading(&s.gen_dir, base, &s.info);
    let (_, mut loaded) = load()?;
    let mut load_rows = Vec::new();
    for _ in 0..s.config.repeats {
        let (row, next) = load()?;
        load_rows.push(row);
        loaded = next;
    }
    let (gen, enc) = loaded;
    let adapter = s.tmp.join("in-process");
    let mut stage_rows = Vec::new();
    for i in 0..=s.config.repeats {
        let row = time_generation(&gen, &enc, &s.prompts, base, &adapter)?;
        if i > 0 {
            stage_rows.push(row);
        }
    }
    let summary = InProcess {
        load_base_config_s: column(&load_rows, 0),
        load_generator_s: column(&load_rows, 1),
        load_encoder_s: column(&load_rows, 2),
        load_s: column(&load_rows, 3),
        encode_s: column(&stage_rows, 0),
        decoder_forward_s: column(&stage_rows, 1),
        detokenize_write_s: column(&stage_rows, 2),
        per_adapter_s: column(&stage_rows, 3),
        peak_rss_mb_after_generation: dnd_io::peak_rss_mb(),
    };
    Ok(Stages {
        summary,
        layout: layout(gen.tokenizer()),
        adapter_config: dnd_io::read_json::<_, BenchError>(
            &adapter.join(dnd_llm::peft::CONFIG_FILE),
        )?,
    })
}

/// The median of column `i`.
fn column(rows: &[[f64; 4]], i: usize) -> f64 {
    median(&rows.iter().map(|r| r[i]).collect::<Vec<_>>())
}

/// Load what `dnd generate` loads: seconds for the base config, generator, encoder and all three.
fn time_loading(
    gen_dir: &Path,
    base_model: &Path,
    info: &GeneratorInfo,
) -> Result<([f64; 4], (Generator, Encoder))> {
    let t = Instant::now();
    let model = ModelConfig::from_path(base_model)?;
    let t_config = t.elapsed().as_secs_f64();
    let gen = Generator::load(gen_dir, &model, None)?;
    let t_gen = t.elapsed().as_secs_f64();
    let enc = Encoder::minilm(EncoderConfig {
        max_len: info.encoder_max_len,
        ..EncoderConfig::default()
    })?;
    let total = t.elapsed().as_secs_f64();
    Ok((
        [t_config, t_gen - t_config, total - t_gen, total],
        (gen, enc),
    ))
}

/// Generate one adapter into `out`: seconds to encode, run the decoder, de-tokenize and write, and
/// all of it.
fn time_generation(
    gen: &Generator,
    enc: &Encoder,
    prompts: &[String],
    base_model: &Path,
    out: &Path,
) -> Result<[f64; 4]> {
    let t = Instant::now();
    let states = enc.encode_each(prompts)?;
    let t_enc = t.elapsed().as_secs_f64();
    let hidden: Vec<_> = states.iter().map(|s| &s.hidden).collect();
    let cond = dnd_generate::condition(&hidden, gen.prompt_len())?.unsqueeze(0)?;
    let tokens = gen.decoder().forward(&cond)?.squeeze(0)?;
    let t_fwd = t.elapsed().as_secs_f64();
    let lora = gen.tokenizer().decode(&tokens)?;
    dnd_llm::peft::save(&lora, out, &base_model.display().to_string())?;
    let total = t.elapsed().as_secs_f64();
    Ok([t_enc, t_fwd - t_enc, total - t_fwd, total])
}

/// The tokenizer's factors in token order, one entry per (layer, target, factor).
fn layout(tok: &LoraTokenizer) -> Layout {
    let mut factors = Vec::new();
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
        factors.push(FactorLayout {
            key: dnd_llm::peft::key(t.layer, t.target, which),
            len,
            transpose: t.factor == Factor::B,
        });
    }
    Layout {
        rank: tok.lora_config().rank,
        chunk_width: tok.chunk_width(),
        factors,
    }
}

/// Seconds per decoder training step (forward, MSE to a random target, backward, AdamW), batch 1, on
/// a freshly initialised decoder of the same config.
fn train_steps(config: &DecoderConfig, steps: usize) -> Result<DecoderTrain> {
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
            .map(|v| store.get(v).cloned().ok_or(BenchError::NoGradient))
            .collect::<Result<Vec<_>>>()?;
        opt.step(&grads, 1e-4)?;
        losses.push(loss.to_scalar::<f32>()?);
        Ok(())
    })?;
    Ok(DecoderTrain {
        step_s_median: med,
        step_s: times,
        steps_per_s: 1.0 / med,
        loss_first: losses.first().map(|&l| f64::from(l)),
        loss_last: losses.last().map(|&l| f64::from(l)),
    })
}
