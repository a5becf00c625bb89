//! One error type for every HTTP answer that is not a success: a status and a message, sent as
//! `{"error": "…"}` (actix's `ResponseError`), so handlers return `Result<_, ApiError>` and use
//! `?` instead of building error bodies by hand. Internal failures are logged with their cause
//! and answered without it: a database's error text is not the caller's business.

use std::fmt;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds, for `Retry-After` on a 429 or 503.
    retry_after: Option<u64>,
    /// A bearer-token refusal (`WWW-Authenticate: Bearer`); other 401s (a bad webhook
    /// signature) name no scheme.
    bearer: bool,
}

impl ApiError {
    /// An answer with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
            bearer: false,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    /// 401 with `WWW-Authenticate: Bearer` (RFC 6750).
    pub fn unauthorized() -> Self {
        Self {
            bearer: true,
            ..Self::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
        }
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn too_many(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, message)
    }
    /// 503: a dependency (the database, the registry) cannot answer now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 500: logged with its cause, answered without it.
    pub fn internal(context: &str, cause: impl fmt::Display) -> Self {
        tracing::error!(error = %cause, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{context} (see the engine's log)"),
        )
    }

    /// Adds `Retry-After: seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status.as_u16(), self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.bearer {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.json(serde_json::json!({ "error": self.message }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    async fn body(err: &ApiError) -> serde_json::Value {
        let bytes = to_bytes(err.error_response().into_body()).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[actix_web::test]
    async fn errors_answer_with_their_status_and_a_json_error() {
        let err = ApiError::not_found("no such call");
        assert_eq!(err.status_code(), StatusCode::NOT_FOUND);
        assert_eq!(
            body(&err).await,
            serde_json::json!({"error": "no such call"})
        );
    }

    #[actix_web::test]
    async fn a_401_names_the_scheme_and_a_503_can_say_when_to_retry() {
        let response = ApiError::unauthorized().error_response();
        assert_eq!(
            response.headers().get(header::WWW_AUTHENTICATE).unwrap(),
            "Bearer"
        );
        let signature = ApiError::new(StatusCode::UNAUTHORIZED, "bad signature").error_response();
        assert!(signature.headers().get(header::WWW_AUTHENTICATE).is_none());
        let response = ApiError::unavailable("database unavailable")
            .retry_after(2)
            .error_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "2");
    }

    #[actix_web::test]
    async fn an_internal_error_does_not_leak_its_cause() {
        let err = ApiError::internal(
            "could not list calls",
            "password authentication failed for user \"secret\"",
        );
        let json = body(&err).await;
        let text = json["error"].as_str().unwrap();
        assert!(text.starts_with("could not list calls"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}
