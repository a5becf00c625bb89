//! The operator surface: health, readiness, Prometheus metrics (the engine's and the process's
//! own), the live-calls API with its event feed, and the `/ops` dashboard.

pub mod api;
pub mod health;
pub mod metrics;

/// The `Authorization: Bearer …` token of a request, trimmed; empty when there is none.
pub(crate) fn bearer(req: &actix_web::HttpRequest) -> &str {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default()
}
