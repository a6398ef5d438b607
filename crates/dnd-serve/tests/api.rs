//! The server's HTTP surface on the tiny model, through the router itself (no socket): keys, the
//! OpenAI routes with and without streaming, the adapter life cycle, and every kind of bad request
//! answered with a 4xx that says what is wrong, the server serving on afterwards.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use candle_core::{DType, Tensor};
use dnd_llm::{Lora, LoraConfig, Target};
use dnd_serve::{app, Backend, Limits, ServeConfig};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const KEY: &str = "user-key";
const ADMIN: &str = "admin-key";

/// A server over the tiny model whose "generator" makes an adapter that depends on the prompt count.
fn server(dir: &std::path::Path, limits: Limits) -> Router {
    let llm = dnd_testkit::tiny_llm(dir);
    let cfg = llm.model.config().clone();
    let generate: dnd_serve::AdapterFn = Box::new(move |prompts| {
        let init = Lora::init(LoraConfig::new(2, 4.0, &Target::ALL), &cfg, 1, DType::F32)
            .map_err(|e| e.to_string())?;
        let fill = 0.5 * prompts.len() as f64;
        let parts = init
            .modules()
            .map(|(l, t, a, b)| {
                let b = (Tensor::ones_like(b).unwrap() * fill).unwrap();
                (l, t, a.clone(), b)
            })
            .collect();
        Lora::from_parts(init.config().clone(), &cfg, parts, "fake".as_ref())
            .map_err(|e| e.to_string())
    });
    let config = ServeConfig {
        model_name: "tiny".into(),
        adapters_dir: dir.join("adapters"),
        api_key: Some(KEY.into()),
        admin_key: Some(ADMIN.into()),
        limits,
    };
    let backend = Backend {
        llm,
        base_model: "tiny".into(),
        generator: Some((generate, "generator-hash".into())),
    };
    app(backend, config).unwrap()
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: Option<String>,
) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    let req = match body {
        Some(b) => req
            .header("Content-Type", "application/json")
            .body(Body::from(b)),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    (
        status,
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

async fn json_call(
    app: &Router,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let (s, b) = call(app, method, uri, key, body.map(|v| v.to_string())).await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "stream": stream})
}

#[tokio::test]
async fn completions_chat_and_streaming() {
    let dir = tempfile::tempdir().unwrap();
    let app = server(dir.path(), Limits::default());
    let (s, v) = json_call(&app, "GET", "/v1/models", Some(KEY), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["data"][0]["id"], "tiny");
    let (s, _) = json_call(&app, "GET", "/v1/models", Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::OK, "the admin key opens user routes too");
    let (s, v) = json_call(
        &app,
        "POST",
        "/v1/completions",
        Some(KEY),
        Some(json!({"model": "tiny", "prompt": "abc", "max_tokens": 5})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["completion_tokens"], 5, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // A stop string ends the text before it, with finish_reason "stop".
    let (_, plain) = json_call(
        &app,
        "POST",
        "/v1/completions",
        Some(KEY),
        Some(json!({"model": "tiny", "prompt": "abc", "max_tokens": 8})),
    )
    .await;
    let full = plain["choices"][0]["text"].as_str().unwrap().to_string();
    let cut = full.char_indices().nth(2).map_or(full.len(), |(i, _)| i);
    let stop = full[cut..]
        .chars()
        .next()
        .map(String::from)
        .unwrap_or_default();
    let (_, v) = json_call(
        &app,
        "POST",
        "/v1/completions",
        Some(KEY),
        Some(json!({"model": "tiny", "prompt": "abc", "max_tokens": 8, "stop": [stop]})),
    )
    .await;
    let expected = &full[..full.find(&stop).unwrap()];
    assert_eq!(
        v["choices"][0]["text"], expected,
        "{full:?} stopped at {stop:?}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Sampling with a seed: the same text for the same seed, other texts for other seeds;
    // temperature 0 is the greedy text.
    let mut sampled = Vec::new();
    for (t, seed) in [(0.0, 0), (2.0, 0), (2.0, 0)]
        .into_iter()
        .chain((1..20).map(|s| (2.0, s)))
    {
        let body = json!({"model": "tiny", "prompt": "abc", "max_tokens": 8, "temperature": t,
                          "seed": seed});
        let (s, v) = json_call(&app, "POST", "/v1/completions", Some(KEY), Some(body)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        sampled.push(v["choices"][0]["text"].as_str().unwrap().to_string());
    }
    assert_eq!(sampled[0], full);
    assert_eq!(sampled[1], sampled[2]);
    let distinct: std::collections::BTreeSet<&String> = sampled[1..].iter().collect();
    assert!(distinct.len() > 1, "{distinct:?}");
    let (s, v) = json_call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(KEY),
        Some(chat("tiny", false)),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    // Streaming gives the same text in chunks, then [DONE].
    let (s, body) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(KEY),
        Some(chat("tiny", true).to_string()),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    let datas: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(datas.last(), Some(&"[DONE]"));
    let streamed: String = datas[..datas.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(streamed, answer);
}

#[tokio::test]
async fn adapters_are_created_used_downloaded_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let app = server(dir.path(), Limits::default());
    let prompts = json!({"prompts": ["what is 2 + 2?", "name a colour", "  "]});
    let (s, _) = json_call(
        &app,
        "POST",
        "/v1/adapters",
        Some(KEY),
        Some(prompts.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the user key cannot create");
    let (s, meta) = json_call(
        &app,
        "POST",
        "/v1/adapters",
        Some(ADMIN),
        Some(prompts.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{meta}");
    assert_eq!(meta["prompts"], 2, "blank prompts are dropped");
    let id = meta["id"].as_str().unwrap().to_string();
    let (_, again) = json_call(&app, "POST", "/v1/adapters", Some(ADMIN), Some(prompts)).await;
    assert_eq!(again["id"], id, "content-addressed");
    let (_, models) = json_call(&app, "GET", "/v1/models", Some(KEY), None).await;
    assert_eq!(models["data"][1]["id"], id.as_str());
    // Used by name, the adapter changes the answer.
    let (s, with) = json_call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(KEY),
        Some(chat(&id, false)),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{with}");
    let (_, base) = json_call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(KEY),
        Some(chat("tiny", false)),
    )
    .await;
    assert_ne!(with["choices"][0]["message"], base["choices"][0]["message"]);
    let (s, zip) = call(
        &app,
        "GET",
        &format!("/v1/adapters/{id}/download"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!((s, &zip[..2]), (StatusCode::OK, &b"PK"[..]));
    let (s, gguf) = call(
        &app,
        "GET",
        &format!("/v1/adapters/{id}/download?format=gguf"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!((s, &gguf[..4]), (StatusCode::OK, &b"GGUF"[..]));
    let (s, _) = call(
        &app,
        "DELETE",
        &format!("/v1/adapters/{id}"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the user key cannot delete");
    let (s, _) = call(
        &app,
        "DELETE",
        &format!("/v1/adapters/{id}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = json_call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(KEY),
        Some(chat(&id, false)),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("adapters"))
            .unwrap()
            .count(),
        0
    );
}

/// method, path, key, body, the status expected and what its message must say.
type Case<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<String>,
    StatusCode,
    &'a str,
);

#[tokio::test]
async fn bad_requests_get_clear_4xx_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_body_bytes: 4096,
        max_prompts: 3,
        max_tokens: 16,
        ..Limits::default()
    };
    let app = server(dir.path(), limits);
    let big = json!({"model": "tiny", "prompt": "x".repeat(5000)}).to_string();
    let cases: Vec<Case<'_>> = vec![
        (
            "GET",
            "/v1/models",
            None,
            None,
            StatusCode::UNAUTHORIZED,
            "bearer key",
        ),
        (
            "GET",
            "/v1/models",
            Some("wrong"),
            None,
            StatusCode::UNAUTHORIZED,
            "bearer key",
        ),
        (
            "POST",
            "/v1/completions",
            Some(KEY),
            Some(big),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
        ),
        (
            "POST",
            "/v1/completions",
            Some(KEY),
            Some("{\"model\": ".into()),
            StatusCode::BAD_REQUEST,
            "JSON",
        ),
        (
            "POST",
            "/v1/completions",
            Some(KEY),
            Some("{\"prompt\": \"x\"}".into()),
            StatusCode::BAD_REQUEST,
            "model",
        ),
        (
            "POST",
            "/v1/completions",
            Some(KEY),
            Some(json!({"model": "nope", "prompt": "x"}).to_string()),
            StatusCode::NOT_FOUND,
            "unknown model `nope`",
        ),
        (
            "POST",
            "/v1/completions",
            Some(KEY),
            Some(json!({"model": "../../etc/passwd", "prompt": "x"}).to_string()),
            StatusCode::NOT_FOUND,
            "unknown model",
        ),
        (
            "POST",
            "/v1/completions",
            Some(KEY),
            Some(json!({"model": "tiny", "prompt": "x", "temperature": 2.5}).to_string()),
            StatusCode::BAD_REQUEST,
            "temperature",
        ),
        (
            "POST",
            "/v1/completions",
            Some(KEY),
            Some(json!({"model": "tiny", "prompt": "x", "max_tokens": 17}).to_string()),
            StatusCode::BAD_REQUEST,
            "max_tokens",
        ),
        (
            "POST",
            "/v1/completions",
            Some(KEY),
            Some(json!({"model": "tiny", "prompt": ["a", "b"]}).to_string()),
            StatusCode::BAD_REQUEST,
            "prompt",
        ),
        (
            "POST",
            "/v1/chat/completions",
            Some(KEY),
            Some(
                json!({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]})
                    .to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "role",
        ),
        (
            "POST",
            "/v1/adapters",
            Some(ADMIN),
            Some(json!({"prompts": ["a", "b", "c", "d"]}).to_string()),
            StatusCode::BAD_REQUEST,
            "1 to 3",
        ),
        (
            "POST",
            "/v1/adapters",
            Some(ADMIN),
            Some(json!({"prompts": []}).to_string()),
            StatusCode::BAD_REQUEST,
            "prompts",
        ),
        (
            "POST",
            "/v1/adapters",
            Some(ADMIN),
            Some(json!({"prompts": ["a"], "description": "b"}).to_string()),
            StatusCode::BAD_REQUEST,
            "exactly one",
        ),
        (
            "POST",
            "/v1/adapters",
            Some(ADMIN),
            Some(json!({"prompt": ["a"]}).to_string()),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            "GET",
            "/v1/adapters/..%2F..%2Fetc%2Fpasswd",
            Some(KEY),
            None,
            StatusCode::BAD_REQUEST,
            "not an adapter id",
        ),
        (
            "GET",
            "/v1/adapters/%2Fetc%2Fpasswd/download",
            Some(KEY),
            None,
            StatusCode::BAD_REQUEST,
            "not an adapter id",
        ),
        (
            "DELETE",
            "/v1/adapters/..",
            Some(ADMIN),
            None,
            StatusCode::BAD_REQUEST,
            "not an adapter id",
        ),
        (
            "GET",
            "/v1/adapters/dnd-0000000000000000",
            Some(KEY),
            None,
            StatusCode::NOT_FOUND,
            "no adapter",
        ),
        (
            "GET",
            "/v1/nothing",
            Some(KEY),
            None,
            StatusCode::NOT_FOUND,
            "no such route",
        ),
    ];
    for (method, uri, key, body, status, says) in cases {
        let (s, b) = call(&app, method, uri, key, body).await;
        let text = String::from_utf8_lossy(&b);
        assert_eq!(s, status, "{method} {uri}: {text}");
        assert!(
            text.contains(says),
            "{method} {uri}: {text} should say {says}"
        );
        let v: Value = serde_json::from_slice(&b)
            .unwrap_or_else(|_| panic!("{method} {uri}: not JSON: {text}"));
        assert!(v["error"]["message"].is_string(), "{text}");
    }
    let (s, _) = json_call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(KEY),
        Some(chat("tiny", false)),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "still serving");
    let (s, page) = call(&app, "GET", "/", None, None).await;
    assert!(
        s == StatusCode::OK && String::from_utf8_lossy(&page).contains("Drop a file of prompts")
    );
}

/// Concurrent requests are decoded together (one batch) and each gets the answer it gets alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_completions_get_their_own_answers() {
    let dir = tempfile::tempdir().unwrap();
    let app = server(dir.path(), Limits::default());
    let prompts = [
        "a",
        "hello there",
        "the quick brown fox",
        "xyz",
        "1 2 3 4 5 6",
        "q",
    ];
    let body = |p: &str, n: usize| Some(json!({"model": "tiny", "prompt": p, "max_tokens": n}));
    let mut alone = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let (_, v) = json_call(&app, "POST", "/v1/completions", Some(KEY), body(p, 3 + i)).await;
        alone.push(v["choices"][0]["text"].clone());
    }
    let tasks: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (app, b) = (app.clone(), body(p, 3 + i));
            tokio::spawn(
                async move { json_call(&app, "POST", "/v1/completions", Some(KEY), b).await },
            )
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let (s, v) = t.await.unwrap();
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["choices"][0]["text"], alone[i], "prompt {i}");
        assert_eq!(v["usage"]["completion_tokens"], 3 + i, "prompt {i}");
    }
}

/// With one adapter resident at a time, alternating between two evicts and reloads them, and every
/// answer stays the one each adapter gives.
#[tokio::test]
async fn evicted_adapters_reload_with_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_resident: 1,
        ..Limits::default()
    };
    let app = server(dir.path(), limits);
    let mut ids = Vec::new();
    for prompts in [json!(["one"]), json!(["one", "two", "three"])] {
        let (_, meta) = json_call(
            &app,
            "POST",
            "/v1/adapters",
            Some(ADMIN),
            Some(json!({"prompts": prompts})),
        )
        .await;
        ids.push(meta["id"].as_str().unwrap().to_string());
    }
    let answer = |id: String| {
        let app = app.clone();
        async move {
            let (s, v) = json_call(
                &app,
                "POST",
                "/v1/chat/completions",
                Some(KEY),
                Some(chat(&id, false)),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            v["choices"][0]["message"]["content"].clone()
        }
    };
    let first = [answer(ids[0].clone()).await, answer(ids[1].clone()).await];
    assert_ne!(first[0], first[1], "the two adapters differ");
    for round in 0..2 {
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                answer(id.clone()).await,
                first[i],
                "round {round}, adapter {i}"
            );
        }
    }
}
