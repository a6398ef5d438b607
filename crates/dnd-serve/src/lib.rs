//! `dnd serve`: one base model and one generator behind an OpenAI-compatible HTTP API, with dnd's
//! adapter routes and a drag-and-drop page. Clients name an adapter as the `model` of a request; an
//! adapter is created from prompts by `POST /v1/adapters` and usable at once.
//!
//! One engine thread owns the model and works through a bounded queue ([`engine`]); the HTTP side
//! (axum on tokio) only parses, checks limits and keys, and streams. Adapter ids are content hashes
//! checked by shape before they name a path ([`adapters`]).

mod adapters;
mod api;
mod archive;
mod engine;
mod error;
mod requests;

pub use adapters::{generator_hash, AdapterMeta, AdapterStore};
pub use api::AppState;
pub use engine::{AdapterFn, Backend, Engine};
pub use error::ApiError;
pub use requests::check_body;

use std::path::PathBuf;
use std::sync::Arc;

/// What a request may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Prompts per adapter.
    pub max_prompts: usize,
    /// Bytes per prompt or message.
    pub max_prompt_bytes: usize,
    /// `max_tokens` per completion.
    pub max_tokens: usize,
    /// Jobs waiting for the engine; one more is answered 503.
    pub max_queue: usize,
    /// Adapters kept in memory (least recently used evicted).
    pub max_resident: usize,
    /// Completions decoded together in one batch.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_prompts: 256,
            max_prompt_bytes: 8192,
            max_tokens: 512,
            max_queue: 64,
            max_resident: 8,
            max_batch: 64,
        }
    }
}

/// A server's settings.
pub struct ServeConfig {
    /// What clients call the base model.
    pub model_name: String,
    /// Where generated adapters live.
    pub adapters_dir: PathBuf,
    pub api_key: Option<String>,
    /// For creating and deleting adapters; the API key when unset.
    pub admin_key: Option<String>,
    pub limits: Limits,
}

/// The router of a server over `backend`.
pub fn app(backend: Backend, config: ServeConfig) -> std::io::Result<axum::Router> {
    let store = Arc::new(AdapterStore::open(&config.adapters_dir)?);
    let model_config = backend.llm.model.config().clone();
    let has_generator = backend.generator.is_some();
    let engine = Engine::start(backend, store.clone(), &config.limits);
    Ok(api::router(Arc::new(AppState {
        engine,
        store,
        model_name: config.model_name,
        model_config,
        has_generator,
        api_key: config.api_key,
        admin_key: config.admin_key,
        limits: config.limits,
        counter: Default::default(),
    })))
}
