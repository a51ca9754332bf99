//! Errors as OpenAI-style JSON: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bitnet_core::Error;

/// An error answered to a client.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: the request is malformed or out of range.
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message, "invalid_request_error", param, None)
    }
    /// 400: a well-formed request for something this server does not do yet.
    pub fn unsupported(message: impl Into<String>, param: &'static str) -> Self {
        let m = message.into();
        Self::new(
            StatusCode::BAD_REQUEST,
            m,
            "invalid_request_error",
            Some(param),
            Some("unsupported"),
        )
    }
    /// 404: the request names another model.
    pub fn model_not_found(asked: &str, served: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("the model `{asked}` does not exist; this server serves `{served}`"),
            "invalid_request_error",
            Some("model"),
            Some("model_not_found"),
        )
    }
    /// 503: the queue is full or the engine has stopped.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message, "server_error", None, None)
    }
    /// An engine error: the caller's fault (400) or the server's (500).
    pub fn from_engine(e: Error) -> Self {
        let client = client_fault(&e);
        let message = e.to_string();
        if client {
            Self::new(StatusCode::BAD_REQUEST, message, "invalid_request_error", None, None)
        } else {
            Self::new(StatusCode::INTERNAL_SERVER_ERROR, message, "server_error", None, None)
        }
    }

    fn new(
        status: StatusCode,
        message: impl Into<String>,
        kind: &'static str,
        param: Option<&'static str>,
        code: Option<&'static str>,
    ) -> Self {
        ApiError { status, message: message.into(), kind, param, code }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
        }})
    }
}

/// Whether an engine error comes from the request (bad ids, too long, bad sampling values).
fn client_fault(e: &Error) -> bool {
    match e {
        Error::InvalidArgument(_) | Error::Unsupported(_) => true,
        Error::Context { inner, .. } => client_fault(inner),
        _ => false,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}
