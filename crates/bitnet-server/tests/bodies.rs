//! Arbitrary request bodies: every answer is a status with a JSON body (an OpenAI error, or a
//! completion whose usage adds up), never a panic or a hung request.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bitnet_inference::Engine;
use bitnet_server::{app, Router, ServerOptions};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::OnceLock;
use tower::ServiceExt;

fn runtime_and_app() -> &'static (tokio::runtime::Runtime, Router) {
    static APP: OnceLock<(tokio::runtime::Runtime, Router)> = OnceLock::new();
    APP.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
        let engine = Engine::builder().model(dir).threads(1).build().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        (rt, app(engine, &ServerOptions::new("default")).unwrap())
    })
}

fn send(uri: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let (rt, app) = runtime_and_app();
    rt.block_on(async {
        let req = Request::post(uri).body(Body::from(body)).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("{status}: not JSON ({e}): {}", String::from_utf8_lossy(&bytes))
        });
        (status, v)
    })
}

/// A JSON value of a few kinds, small numbers included (token budgets stay short).
fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-3i64..40).prop_map(Value::from),
        (-2.0f64..3.0).prop_map(Value::from),
        "[a-zA-Z :]{0,12}".prop_map(Value::from),
        prop::collection::vec(0u32..5000, 0..4).prop_map(|v| json!(v)),
        prop::collection::vec("[a-z]{0,5}", 0..3).prop_map(|v| json!(v)),
        Just(json!([{ "role": "user", "content": "Hi" }])),
        Just(json!({ "include_usage": true })),
    ]
}

const FIELDS: &[&str] = &[
    "prompt",
    "messages",
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "seed",
    "stop",
    "n",
    "logprobs",
    "echo",
    "stream_options",
    "frequency_penalty",
    "ignore_eos",
    "suffix",
    "tools",
];

fn check(uri: &str, status: StatusCode, v: &Value) {
    if status == StatusCode::OK {
        let u = &v["usage"];
        let total = u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap();
        assert_eq!(u["total_tokens"].as_u64(), Some(total), "{uri}: {v}");
        assert!(v["choices"][0]["finish_reason"].is_string(), "{v}");
    } else {
        assert!([400, 404].contains(&status.as_u16()), "{uri}: {status} {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_get_a_json_error(bytes in prop::collection::vec(any::<u8>(), 0..64), chat in any::<bool>()) {
        let uri = if chat { "/v1/chat/completions" } else { "/v1/completions" };
        let (status, v) = send(uri, bytes);
        check(uri, status, &v);
    }

    #[test]
    fn random_fields_get_an_answer(
        fields in prop::collection::vec((0..FIELDS.len(), value()), 0..4),
        chat in any::<bool>(),
        base in 0..4u8,
    ) {
        let uri = if chat { "/v1/chat/completions" } else { "/v1/completions" };
        let mut m = Map::new();
        // Mostly a valid request that the random fields then change.
        match (base, chat) {
            (0, _) => {}
            (_, true) => { m.insert("messages".into(), json!([{ "role": "user", "content": "Hi" }])); }
            (_, false) => { m.insert("prompt".into(), json!("ROMEO:")); }
        }
        for (f, v) in fields {
            m.insert(FIELDS[f].to_string(), v);
        }
        // Bodies are never streams here: a stream's status comes before its end.
        m.remove("stream");
        if m.get("max_tokens").and_then(Value::as_i64).is_none_or(|n| n > 40) {
            m.insert("max_tokens".into(), json!(8));
        }
        let (status, v) = send(uri, Value::Object(m).to_string().into_bytes());
        check(uri, status, &v);
    }
}
