//! The HTTP surface: OpenAI-compatible `/v1/models`, `/v1/completions` and `/v1/chat/completions`
//! (streamed as server-sent events on request), dnd's `/v1/adapters`, and the page at `/`.

use crate::adapters::AdapterStore;
use crate::engine::{Completion, Engine, Event};
use crate::error::{ApiError, ApiResult};
use crate::requests::{ChatRequest, Checked, CompletionRequest, CreateAdapter};
use crate::Limits;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use dnd_llm::ModelConfig;
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

/// Everything a handler needs.
pub struct AppState {
    pub engine: Engine,
    pub store: Arc<AdapterStore>,
    /// The name clients use for the base model (`model` in requests).
    pub model_name: String,
    pub model_config: ModelConfig,
    pub has_generator: bool,
    pub api_key: Option<String>,
    pub admin_key: Option<String>,
    pub limits: Limits,
    pub counter: AtomicU64,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/v1/models", get(models))
        .route("/v1/completions", axum::routing::post(completions))
        .route("/v1/chat/completions", axum::routing::post(chat))
        .route("/v1/adapters", get(list_adapters).post(create_adapter))
        .route("/v1/adapters/{id}", get(get_adapter).delete(delete_adapter))
        .route("/v1/adapters/{id}/download", get(download))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.limits.max_body_bytes,
        ))
        .with_state(state)
}

/// Bearer keys: the API key for every route but the page (static HTML that holds no data and asks for
/// the key itself); the admin key, when set, for creating and deleting adapters, and it opens the
/// user routes too.
async fn auth(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let admin = req.uri().path() == "/v1/adapters" && req.method() == Method::POST
        || req.uri().path().starts_with("/v1/adapters/") && req.method() == Method::DELETE;
    // The keys that open this route: the admin key opens every route (its holder may do all a user
    // may), the API key every route but the admin ones when an admin key is set.
    let keys: Vec<&String> = if req.uri().path() == "/" {
        Vec::new()
    } else if admin && s.admin_key.is_some() {
        s.admin_key.iter().collect()
    } else {
        s.api_key.iter().chain(s.admin_key.iter()).collect()
    };
    if keys.is_empty() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| {
        keys.iter()
            .any(|k| constant_time_eq(g.as_bytes(), k.as_bytes()))
    }) {
        return next.run(req).await;
    }
    let what = if admin {
        "the admin key"
    } else {
        "the API key"
    };
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        format!("missing or wrong bearer key: this route needs {what} (Authorization: Bearer KEY)"),
    )
    .into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON body whose rejections (malformed JSON, wrong types, missing fields, wrong content type) come
/// back as OpenAI-shaped 400s naming the problem.
struct Body<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(JsonRejection::BytesRejection(e)) => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("request body: {}", e.body_text()),
            )),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn models(State(s): State<Arc<AppState>>) -> axum::Json<Value> {
    let mut data =
        vec![json!({"id": s.model_name, "object": "model", "created": 0, "owned_by": "dnd"})];
    data.extend(s.store.list().into_iter().map(|a| {
        json!({"id": a.id, "object": "model", "created": a.created, "owned_by": "dnd", "parent": s.model_name})
    }));
    axum::Json(json!({"object": "list", "data": data}))
}

impl AppState {
    /// The adapter `model` names: none for the base model's name, else a stored adapter.
    fn resolve(&self, model: &str) -> ApiResult<Option<String>> {
        if model == self.model_name {
            return Ok(None);
        }
        self.store.path(model).map_err(|_| {
            ApiError::not_found(format!(
                "unknown model `{}`: use `{}` (the base) or an adapter id from GET /v1/models",
                model.chars().take(80).collect::<String>(),
                self.model_name
            ))
        })?;
        Ok(Some(model.to_string()))
    }

    /// Queue a checked completion: its model name, whether it streams, and its events.
    fn queue(&self, c: Checked) -> ApiResult<(String, bool, mpsc::UnboundedReceiver<Event>)> {
        let events = self.engine.complete(Completion {
            adapter: self.resolve(&c.model)?,
            input: c.input,
            max_tokens: c.max_tokens,
            stop: c.stop,
            sampling: c.sampling,
        })?;
        Ok((c.model, c.stream, events))
    }

    fn next_id(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.counter.fetch_add(1, Ordering::Relaxed))
    }
}

async fn completions(
    State(s): State<Arc<AppState>>,
    Body(r): Body<CompletionRequest>,
) -> ApiResult<Response> {
    let (model, stream, events) = s.queue(r.check(&s.limits)?)?;
    let id = s.next_id("cmpl");
    let shape = move |text: &str, finish: Option<&str>| {
        json!({"id": id, "object": "text_completion", "created": now(), "model": model,
               "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": null}]})
    };
    respond(events, stream, shape).await
}

async fn chat(State(s): State<Arc<AppState>>, Body(r): Body<ChatRequest>) -> ApiResult<Response> {
    let (model, stream, events) = s.queue(r.check(&s.limits)?)?;
    let id = s.next_id("chatcmpl");
    let shape = move |text: &str, finish: Option<&str>| {
        if stream {
            json!({"id": id, "object": "chat.completion.chunk", "created": now(), "model": model,
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": finish}]})
        } else {
            json!({"id": id, "object": "chat.completion", "created": now(), "model": model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}]})
        }
    };
    respond(events, stream, shape).await
}

/// The whole answer as one JSON object with `usage`, or an SSE stream of chunks ending in `[DONE]`.
async fn respond(
    mut events: mpsc::UnboundedReceiver<Event>,
    stream: bool,
    shape: impl Fn(&str, Option<&str>) -> Value + Send + 'static,
) -> ApiResult<Response> {
    if stream {
        let sse = UnboundedReceiverStream::new(events).map(move |e| {
            let data = match e {
                Event::Text(t) => shape(&t, None).to_string(),
                Event::Done { finish_reason, .. } => shape("", Some(finish_reason)).to_string(),
                Event::Error(e) => {
                    json!({"error": {"message": e.message, "type": e.kind}}).to_string()
                }
            };
            Ok::<_, Infallible>(SseEvent::default().data(data))
        });
        let done = tokio_stream::once(Ok(SseEvent::default().data("[DONE]")));
        return Ok(Sse::new(sse.chain(done)).into_response());
    }
    let mut text = String::new();
    while let Some(e) = events.recv().await {
        match e {
            Event::Text(t) => text.push_str(&t),
            Event::Error(e) => return Err(e),
            Event::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
            } => {
                let mut v = shape(&text, Some(finish_reason));
                v["usage"] = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                    "total_tokens": prompt_tokens + completion_tokens});
                return Ok(axum::Json(v).into_response());
            }
        }
    }
    Err(ApiError::internal("the generation ended without a result"))
}

async fn create_adapter(
    State(s): State<Arc<AppState>>,
    Body(r): Body<CreateAdapter>,
) -> ApiResult<Response> {
    let prompts = r.check(&s.limits)?;
    if !s.has_generator {
        return Err(ApiError::bad_request(
            "this server has no generator (start it with --generator DIR)",
        ));
    }
    let meta = s.engine.create(prompts).await?;
    Ok((StatusCode::CREATED, axum::Json(meta)).into_response())
}

async fn list_adapters(State(s): State<Arc<AppState>>) -> axum::Json<Value> {
    axum::Json(json!({"object": "list", "data": s.store.list()}))
}

async fn get_adapter(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(json!(s.store.meta(&id)?)))
}

async fn delete_adapter(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    s.store.delete(&id)?;
    Ok(axum::Json(
        json!({"id": id, "object": "adapter", "deleted": true}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DownloadQuery {
    format: Option<String>,
}

/// The adapter as a PEFT zip archive (default) or a llama.cpp LoRA GGUF.
async fn download(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<DownloadQuery>,
) -> ApiResult<Response> {
    let dir = s.store.path(&id)?;
    let format = q.format.unwrap_or_else(|| "peft".into());
    let cfg = s.model_config.clone();
    let (bytes, kind, name) = match format.as_str() {
        "peft" => (
            blocking(move || crate::archive::peft_zip(&dir)).await?,
            "application/zip",
            format!("{id}.zip"),
        ),
        "gguf" => (
            blocking(move || crate::archive::lora_gguf(&dir, &cfg)).await?,
            "application/octet-stream",
            format!("{id}.gguf"),
        ),
        other => {
            return Err(ApiError::bad_request(format!(
                "format: `{}` (peft or gguf)",
                other.chars().take(20).collect::<String>()
            )))
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, kind.parse().expect("static"));
    headers.insert(
        header::CONTENT_DISPOSITION,
        format!("attachment; filename=\"{name}\"")
            .parse()
            .expect("id is ascii"),
    );
    Ok((headers, bytes).into_response())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
