//! The HTTP API against the shipped model (`models/default`) on the CPU: responses compared with
//! what the engine generates directly for the same request.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bitnet_inference::sampling::SamplingParams;
use bitnet_inference::{Engine, GenerationConfig};
use bitnet_server::{app, Router, ServerOptions};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::path::PathBuf;
use tower::ServiceExt;

fn engine() -> Engine {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
    Engine::builder().model(dir).threads(2).device("cpu".parse().unwrap()).build().unwrap()
}

fn server() -> Router {
    app(engine(), &ServerOptions::new("default")).unwrap()
}

/// Status and body of one request.
async fn call(app: &Router, method: &str, uri: &str, body: Option<&str>) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn post(app: &Router, uri: &str, body: Value) -> (StatusCode, Value) {
    let (status, text) = call(app, "POST", uri, Some(&body.to_string())).await;
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

/// The `data:` payloads of a server-sent-events body.
fn sse_data(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

fn greedy(max_tokens: usize, add_bos: bool) -> GenerationConfig {
    GenerationConfig {
        max_tokens,
        sampling: SamplingParams { temperature: 0.0, ..SamplingParams::default() },
        add_bos,
        ..GenerationConfig::default()
    }
}

#[tokio::test]
async fn health_models_metrics_and_unknown_routes() {
    let app = server();
    let (s, body) = call(&app, "GET", "/health", None).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, r#"{"status":"ok"}"#));
    let (s, body) = call(&app, "GET", "/v1/models", None).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["data"][0]["id"], "default");
    let (s, _) = call(&app, "GET", "/v1/models/default", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = call(&app, "GET", "/v1/models/gpt-4", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(body.contains("model_not_found"), "{body}");
    let (s, body) = call(&app, "GET", "/v2/nothing", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(body.contains("\"error\""), "{body}");
    let (s, body) = call(&app, "GET", "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("bitnet_request_errors_total 2\n"), "{body}");
    assert!(body.contains("bitnet_requests_total{endpoint=\"completions\"} 0\n"), "{body}");
}

#[tokio::test]
async fn completion_is_what_the_engine_generates() {
    let want = engine().generate("ROMEO:", &greedy(24, true)).unwrap();
    let app = server();
    let req = json!({ "model": "default", "prompt": "ROMEO:", "max_tokens": 24, "temperature": 0 });
    let (s, v) = post(&app, "/v1/completions", req).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want.text.as_str());
    assert!(!want.text.is_empty());
    let reason = if want.generated_ids.len() == 24 { "length" } else { "stop" };
    assert_eq!(v["choices"][0]["finish_reason"], reason);
    assert_eq!(v["usage"]["prompt_tokens"], want.prompt_ids.len());
    assert_eq!(v["usage"]["completion_tokens"], want.generated_ids.len());
    let (_, m) = call(&app, "GET", "/metrics", None).await;
    assert!(m.contains(&format!("bitnet_generated_tokens_total {}\n", want.generated_ids.len())));

    // The same request with token ids as the prompt.
    let req = json!({ "prompt": want.prompt_ids, "max_tokens": 24, "temperature": 0 });
    let (s, v) = post(&app, "/v1/completions", req).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["text"], want.text.as_str());
}

#[tokio::test]
async fn streamed_completion_matches_the_whole_one() {
    let app = server();
    let base = json!({ "prompt": "JULIET:", "max_tokens": 30, "temperature": 0.7, "seed": 7 });
    let (_, whole) = post(&app, "/v1/completions", base.clone()).await;
    let mut req = base;
    req["stream"] = json!(true);
    req["stream_options"] = json!({ "include_usage": true });
    let (s, body) = call(&app, "POST", "/v1/completions", Some(&req.to_string())).await;
    assert_eq!(s, StatusCode::OK);
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let (usage, chunks) = chunks.split_last().unwrap();
    assert_eq!(usage["usage"], whole["usage"]);
    assert_eq!(usage["choices"], json!([]));
    let text: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    assert!(chunks.len() > 2, "{body}");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], whole["choices"][0]["finish_reason"]);
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["choices"][0]["finish_reason"].is_null()));
}

#[tokio::test]
async fn chat_completion_uses_the_chat_template() {
    let mut e = engine();
    let msgs = [
        bitnet_inference::chat::ChatMessage::new("system", "Speak in verse."),
        bitnet_inference::chat::ChatMessage::new("user", "Who art thou?"),
    ];
    let ids = e.encode(&e.chat_prompt(&msgs).unwrap(), false).unwrap();
    let want = e.generate_ids(&ids, &greedy(20, false)).unwrap();
    let app = server();
    let req = json!({
        "messages": [
            { "role": "system", "content": "Speak in verse." },
            { "role": "user", "content": [{ "type": "text", "text": "Who art " }, { "type": "text", "text": "thou?" }] },
        ],
        "max_tokens": 20, "temperature": 0,
    });
    let (s, v) = post(&app, "/v1/chat/completions", req.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], want.text.as_str());
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());

    let mut req = req;
    req["stream"] = json!(true);
    let (_, body) = call(&app, "POST", "/v1/chat/completions", Some(&req.to_string())).await;
    let data = sse_data(&body);
    let chunks: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let text: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, want.text);
}

#[tokio::test]
async fn stop_strings_end_the_text_before_them() {
    let app = server();
    let req = json!({ "prompt": "ROMEO:", "max_tokens": 40, "temperature": 0 });
    let (_, free) = post(&app, "/v1/completions", req.clone()).await;
    let free = free["choices"][0]["text"].as_str().unwrap().to_string();
    let cut = free.find('e').expect("the greedy text has an 'e'");
    let mut req = req;
    req["stop"] = json!(["e", "zzz"]);
    let (_, v) = post(&app, "/v1/completions", req).await;
    assert_eq!(v["choices"][0]["text"], &free[..cut]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let app = server();
    let cases: &[(&str, &str, StatusCode, &str)] = &[
        ("/v1/completions", "{not json", StatusCode::BAD_REQUEST, "not valid"),
        (
            "/v1/completions",
            r#"{"max_tokens": 3}"#,
            StatusCode::BAD_REQUEST,
            "`prompt` is required",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "n": 2}"#,
            StatusCode::BAD_REQUEST,
            "not supported yet",
        ),
        ("/v1/completions", r#"{"prompt": "a", "model": "gpt-4"}"#, StatusCode::NOT_FOUND, "gpt-4"),
        (
            "/v1/completions",
            r#"{"prompt": "a", "temperature": -1}"#,
            StatusCode::BAD_REQUEST,
            "temperature",
        ),
        ("/v1/completions", r#"{"prompt": [999999]}"#, StatusCode::BAD_REQUEST, "out of range"),
        ("/v1/completions", r#"{"prompt": ["a", "b"]}"#, StatusCode::BAD_REQUEST, "more than one"),
        (
            "/v1/completions",
            r#"{"prompt": "a", "logprobs": 2}"#,
            StatusCode::BAD_REQUEST,
            "logprobs",
        ),
        ("/v1/chat/completions", r#"{"messages": []}"#, StatusCode::BAD_REQUEST, "empty"),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
            StatusCode::BAD_REQUEST,
            "image_url",
        ),
    ];
    for (uri, body, status, needle) in cases {
        let (s, text) = call(&app, "POST", uri, Some(body)).await;
        assert_eq!(s, *status, "{body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    // A prompt longer than the context fails before any event, so even a stream gets a status.
    let long: Vec<u32> = vec![5; 300];
    let req = json!({ "prompt": long, "stream": true });
    let (s, text) = call(&app, "POST", "/v1/completions", Some(&req.to_string())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("context"), "{text}");
    let (_, m) = call(&app, "GET", "/metrics", None).await;
    assert!(m.contains(&format!("bitnet_request_errors_total {}\n", cases.len() + 1)), "{m}");
}

#[test]
fn serves_over_tcp_until_shutdown() {
    use std::io::{Read, Write};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = rt.spawn(bitnet_server::serve(listener, server(), async {
        let _ = stopped.await;
    }));
    let body = r#"{"prompt": "ROMEO:", "max_tokens": 5, "temperature": 0}"#;
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"completion_tokens\":5"), "{resp}");
    stop.send(()).unwrap();
    rt.block_on(handle).unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_get_their_own_generation() {
    let prompts = ["ROMEO:", "JULIET:", "First Citizen:", "MENENIUS:", "KING RICHARD III:", "O"];
    let mut e = engine();
    let want: Vec<String> = prompts
        .iter()
        .enumerate()
        .map(|(k, p)| e.generate(p, &greedy(8 + 3 * k, true)).unwrap().text)
        .collect();
    let app = server(); // 4 slots: six requests, two of them wait for a slot
    let handles: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let app = app.clone();
            let req = json!({ "prompt": p, "max_tokens": 8 + 3 * k, "temperature": 0 });
            tokio::spawn(async move { post(&app, "/v1/completions", req).await })
        })
        .collect();
    for (k, h) in handles.into_iter().enumerate() {
        let (s, v) = h.await.unwrap();
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["choices"][0]["text"], want[k].as_str(), "request {k}");
    }
}
