//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the HTTP
//! status OpenAI uses for the same case (400 bad request, 401 bad key, 404 unknown model or
//! route, 409 busy, 413 body too large, 500 internal, 503 shutting down).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `server_error`, ...
    pub(crate) kind: &'static str,
    /// The request field at fault.
    pub(crate) param: Option<String>,
    /// A machine-readable code: `model_not_found`, `context_length_exceeded`, ...
    pub(crate) code: Option<&'static str>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    /// A 400 about `param`.
    pub(crate) fn invalid(param: impl Into<Option<&'static str>>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.into().map(str::to_string),
            code: None,
        }
    }

    /// A 400 with a code.
    pub(crate) fn invalid_code(param: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { code: Some(code), ..Self::invalid(param, message) }
    }

    /// 404 for a model id the server does not serve.
    pub(crate) fn model_not_found(model: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist (GET /v1/models lists the served ones)."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// 404 for anything else that is not there.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::NOT_FOUND, message: message.into(), kind: "invalid_request_error", param: None, code: Some("not_found") }
    }

    /// 409: a conflicting operation runs (a training job).
    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::CONFLICT, message: message.into(), kind: "invalid_request_error", param: None, code: Some("conflict") }
    }

    /// 401.
    pub(crate) fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "Incorrect API key provided: pass the server's --api-key as a bearer token.".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// 500.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into(), kind: "server_error", param: None, code: None }
    }

    /// 503 while shutting down.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: message.into(), kind: "server_error", param: None, code: Some("unavailable") }
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> serde_json::Value {
        serde_json::to_value(Body {
            error: Inner { message: &self.message, kind: self.kind, param: self.param.as_deref(), code: self.code },
        })
        .unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

impl From<tailor::Error> for ApiError {
    fn from(e: tailor::Error) -> Self {
        use tailor::ErrorKind as K;
        match (&e, e.kind()) {
            (tailor::Error::ContextOverflow { .. }, _) => ApiError::invalid_code("messages", "context_length_exceeded", e.to_string()),
            (_, K::InvalidArgument) => ApiError::invalid(None, e.to_string()),
            (_, K::NotFound) => ApiError::not_found(e.to_string()),
            (_, K::Incompatible) | (_, K::CorruptData) | (_, K::Unsupported) => ApiError::invalid(None, e.to_string()),
            (_, K::Busy) => ApiError::conflict(e.to_string()),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl From<tailor::profile::Error> for ApiError {
    fn from(e: tailor::profile::Error) -> Self {
        ApiError::from(tailor::Error::from(e))
    }
}

impl From<tailor::adapters::Error> for ApiError {
    fn from(e: tailor::adapters::Error) -> Self {
        ApiError::from(tailor::Error::from(e))
    }
}

impl From<tailor_trainer::personal::Error> for ApiError {
    fn from(e: tailor_trainer::personal::Error) -> Self {
        use tailor_trainer::personal::Error as P;
        match e {
            P::Busy => ApiError::conflict(e.to_string()),
            P::NoFeedback | P::NothingToRollBack => ApiError::invalid(None, e.to_string()),
            P::Engine(e) => e.into(),
            P::Profile(e) => e.into(),
            P::Adapter(e) => e.into(),
            other => ApiError::internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openais_shape() {
        let b = ApiError::model_not_found("gpt-9").body();
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["param"], "model");
        assert_eq!(b["error"]["code"], "model_not_found");
        assert!(b["error"]["message"].as_str().unwrap().contains("gpt-9"));
        let b = ApiError::invalid(None, "x").body();
        assert!(b["error"]["param"].is_null() && b["error"]["code"].is_null());
    }

    #[test]
    fn context_overflow_is_a_400_with_its_code() {
        let e: ApiError = tailor::Error::ContextOverflow { needed: 5000, context: 4096 }.into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, Some("context_length_exceeded"));
    }
}
