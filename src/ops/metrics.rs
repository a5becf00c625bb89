//! `GET /metrics`: the node's registry ([`crate::metrics`]) in OpenMetrics text.

use actix_web::{get, web, HttpResponse};

use crate::state::AppState;

/// Prometheus scrape endpoint. Open only when no token is configured at all (the zero-config
/// run); once `api.admin_token` or `api.metrics_token` is set it needs one of them as
/// `Authorization: Bearer …` (401 otherwise, before anything is encoded).
#[get("/metrics")]
pub async fn scrape(req: actix_web::HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let accepted: Vec<&crate::secret::Secret> = [&state.metrics_token, &state.admin_token]
        .into_iter()
        .flatten()
        .collect();
    if !accepted.is_empty() {
        let given = super::bearer(&req);
        // Every configured token is compared (no early exit on a match).
        let matched = accepted.iter().fold(false, |matched, token| {
            crate::crypto::constant_time_eq(given.as_bytes(), token.expose().as_bytes()) | matched
        });
        if given.is_empty() || !matched {
            use actix_web::ResponseError;
            return crate::http_error::ApiError::unauthorized().error_response();
        }
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.encode())
}
