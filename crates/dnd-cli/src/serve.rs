//! `dnd serve`: the OpenAI-compatible server (dnd-serve) over one base model and one generator.

use anyhow::{bail, Context, Result};
use dnd_encode::{Encoder, EncoderConfig};
use dnd_generate::{draw_batches, DragAndDrop, Generator};
use dnd_serve::{Backend, Limits, ServeConfig};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to bind. Anything but loopback needs --api-key.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Bearer key every request must carry (the page at / asks for it).
    #[arg(long, env = "DND_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Bearer key for creating and deleting adapters (default: the API key).
    #[arg(long, env = "DND_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Generator directory (from `dnd train`); without it the server only serves the base model and
    /// adapters already in --adapters.
    #[arg(long)]
    generator: Option<PathBuf>,
    #[command(flatten)]
    model: crate::common::ModelArg,
    /// Where generated adapters are kept (default: $DND_CACHE/serve/adapters).
    #[arg(long)]
    adapters: Option<PathBuf>,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// Most prompts per adapter.
    #[arg(long, default_value_t = 256)]
    max_prompts: usize,
    /// Largest prompt or chat message, bytes.
    #[arg(long, default_value_t = 8192)]
    max_prompt_bytes: usize,
    /// Largest max_tokens of a completion.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// Jobs that may wait for the model; more are answered 503.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Adapters kept in memory.
    #[arg(long, default_value_t = 8)]
    max_resident: usize,
    /// Completions decoded together as one batch.
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    /// Read prompts and decode on the GGUF's quantised blocks (as `dnd generate-text --quantized`):
    /// faster prompts and steps, logits rounded like llama.cpp's.
    #[arg(long)]
    quantized: bool,
}

pub fn run(a: ServeArgs) -> Result<()> {
    if !a.host.is_loopback() && a.api_key.is_none() {
        bail!(
            "refusing to serve on {} without --api-key (or DND_API_KEY): anyone who reaches it could use it",
            a.host
        );
    }
    let mut llm = a.model.load()?;
    if a.quantized {
        let n = llm.quantize_for_inference()?;
        tracing::info!("{n} weights decode on their quantised blocks");
    }
    let generator = a
        .generator
        .as_ref()
        .map(|dir| load_generator(dir, &llm))
        .transpose()?;
    let model_name = model_name(&a.model.model);
    let config = ServeConfig {
        model_name: model_name.clone(),
        adapters_dir: a
            .adapters
            .clone()
            .unwrap_or_else(|| dnd_assets::cache_root().join("serve").join("adapters")),
        api_key: a.api_key.clone(),
        admin_key: a.admin_key.clone(),
        limits: Limits {
            max_body_bytes: a.max_body,
            max_prompts: a.max_prompts,
            max_prompt_bytes: a.max_prompt_bytes,
            max_tokens: a.max_tokens,
            max_queue: a.max_queue,
            max_resident: a.max_resident,
            max_batch: a.max_batch,
        },
    };
    let adapters_dir = config.adapters_dir.clone();
    let base_model = dnd_assets::portable_name(&llm.source);
    let backend = Backend {
        llm,
        base_model,
        generator,
    };
    let app = dnd_serve::app(backend, config)
        .with_context(|| format!("opening {}", adapters_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host, a.port))
            .await
            .with_context(|| format!("binding {}:{}", a.host, a.port))?;
        tracing::info!(
            "serving `{model_name}` on http://{} (adapters in {})",
            listener.local_addr()?,
            adapters_dir.display()
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown())
            .await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// The generator composed with its prompt encoder, as the function the engine calls, and its hash.
fn load_generator(
    dir: &std::path::Path,
    llm: &dnd_llm::Llm,
) -> Result<(dnd_serve::AdapterFn, String)> {
    let base = &llm.source;
    let gen = Generator::load(dir, llm.model.config(), None)?;
    let enc = Encoder::minilm(EncoderConfig {
        max_len: gen.info().encoder_max_len,
        ..EncoderConfig::default()
    })?;
    let dnd = DragAndDrop::new(gen, enc, &base.display().to_string(), dir)?;
    let hash =
        dnd_serve::generator_hash(dir).with_context(|| format!("reading {}", dir.display()))?;
    // One batch of the generator's N prompts drawn with seed 0 (as `dnd generate` draws its first), so
    // the same prompts give the same adapter.
    let generate: dnd_serve::AdapterFn = Box::new(move |prompts| {
        let n = dnd.generator().prompts_per_batch();
        let batch = draw_batches(prompts.len(), n, 1, 0).map_err(|e| e.to_string())?;
        let texts: Vec<&str> = batch[0].iter().map(|&i| prompts[i]).collect();
        dnd.generate(&texts).map_err(|e| e.to_string())
    });
    Ok((generate, hash))
}

/// What clients call the base model: the asset name, or the file or directory name of a path.
fn model_name(model: &str) -> String {
    let p = std::path::Path::new(model);
    p.file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
        .unwrap_or_else(|| model.to_string())
}

/// Ctrl-C or SIGTERM: stop accepting, finish the requests in flight. An adapter being written is
/// complete or absent (it is renamed into place), so nothing half-written is left visible.
async fn shutdown() {
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
