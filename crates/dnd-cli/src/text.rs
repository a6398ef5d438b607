//! `dnd generate-text` and `dnd score`: direct use of a base model, with or without an adapter.

use crate::common::{load_adapter, ModelArg};
use anyhow::{bail, Context, Result};
use dnd_llm::score::{encode_pair, generate_batch, loglikelihood, Sampling};
use dnd_llm::ChatMessage;
use std::io::BufRead;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Send the prompt as one user message through the model's chat template.
    #[arg(long)]
    chat: bool,
    /// PEFT adapter directory to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(long, default_value_t = 48)]
    max_new_tokens: usize,
    /// Read the prompt and decode on the GGUF's quantised blocks (4-8x fewer bytes read per token;
    /// any adapter stays f32, its own low-rank product). Logits then differ from the f32 path's by
    /// llama.cpp-like rounding (results/bench/README.md), so outputs may too.
    #[arg(long)]
    quantized: bool,
    /// Sample at this temperature instead of decoding greedily (0).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sample among the k likeliest tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample from the smallest set of tokens whose probability reaches p.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Seed of the sampler: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let mut llm = args.model.load()?;
    if args.quantized {
        let n = llm.quantize_for_inference()?;
        tracing::info!("{n} weights decode on their quantised blocks");
    }
    let lora = args
        .adapter
        .as_deref()
        .map(|d| load_adapter(&llm, d))
        .transpose()?;
    let ids = if args.chat {
        llm.tokenizer
            .encode_chat(&[ChatMessage::new("user", &args.prompt)], true)?
    } else {
        llm.tokenizer.encode(&args.prompt, true)?
    };
    let t = std::time::Instant::now();
    // Merged for speed on the f32 path; kept apart on the quantised one, whose blocks a merge
    // would drop.
    let (model, lora) = match &lora {
        Some(l) if !args.quantized => (llm.model.merged(l)?, None),
        _ => (llm.model.clone(), lora.as_ref()),
    };
    let sampling = Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    let out = generate_batch(
        &model,
        lora,
        &[ids],
        &[sampling],
        args.max_new_tokens,
        llm.tokenizer.eos_ids(),
        &|_, _| false,
    )?
    .remove(0);
    let secs = t.elapsed().as_secs_f64();
    println!("{}", llm.tokenizer.decode(&out, true)?);
    tracing::info!(
        "{} tokens in {secs:.2}s ({:.1} tok/s)",
        out.len(),
        out.len() as f64 / secs
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    model: ModelArg,
    /// JSONL with one `{"context": str, "continuation": str}` per line. Consecutive lines with the same
    /// context are scored together, reusing the context.
    #[arg(long)]
    input: PathBuf,
    /// Output JSONL: `{"logprob", "is_greedy", "tokens"}` per input line (stdout if absent).
    #[arg(long)]
    output: Option<PathBuf>,
    #[arg(long)]
    adapter: Option<PathBuf>,
}

#[derive(serde::Deserialize)]
struct Pair {
    context: String,
    continuation: String,
}

pub fn score(args: ScoreArgs) -> Result<()> {
    let file = std::fs::File::open(&args.input)
        .with_context(|| format!("opening {}", args.input.display()))?;
    let mut pairs = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", args.input.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let p: Pair = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}:{}: expected {{\"context\", \"continuation\"}}",
                args.input.display(),
                i + 1
            )
        })?;
        pairs.push(p);
    }
    if pairs.is_empty() {
        bail!("{}: no (context, continuation) pairs", args.input.display());
    }
    let llm = args.model.load()?;
    let lora = args
        .adapter
        .as_deref()
        .map(|d| load_adapter(&llm, d))
        .transpose()?;
    let model = match &lora {
        Some(l) => llm.model.merged(l)?,
        None => llm.model.clone(),
    };
    let bar = indicatif::ProgressBar::new(pairs.len() as u64);
    let mut lines = Vec::with_capacity(pairs.len());
    let mut start = 0;
    while start < pairs.len() {
        let end = start
            + pairs[start..]
                .iter()
                .take_while(|p| p.context == pairs[start].context)
                .count();
        let encoded: Vec<_> = pairs[start..end]
            .iter()
            .map(|p| encode_pair(&llm.tokenizer, &p.context, &p.continuation))
            .collect::<Result<_, _>>()?;
        // Pairs that tokenise to different contexts (a trailing space moves into the continuation) are
        // still exact: group by the encoded context.
        let mut i = 0;
        while i < encoded.len() {
            let j = i + encoded[i..]
                .iter()
                .take_while(|e| e.0 == encoded[i].0)
                .count();
            let conts: Vec<Vec<u32>> = encoded[i..j].iter().map(|e| e.1.clone()).collect();
            for (ll, c) in loglikelihood(&model, None, &encoded[i].0, &conts)?
                .into_iter()
                .zip(&conts)
            {
                lines.push(serde_json::json!({"logprob": ll.logprob, "is_greedy": ll.is_greedy, "tokens": c.len()}).to_string());
            }
            i = j;
        }
        bar.inc((end - start) as u64);
        start = end;
    }
    bar.finish_and_clear();
    let text = lines.join("\n") + "\n";
    match args.output {
        Some(path) => dnd_io::write_atomic(&path, &text)?,
        None => print!("{text}"),
    }
    Ok(())
}
