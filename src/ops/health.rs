//! `GET /healthz` (the process is alive) and `GET /readyz` (the database answers and the node is
//! not draining). Both are open: load balancers and orchestrators call them without a token.

use std::time::Duration;

use actix_web::{get, web, HttpResponse};
use serde_json::json;

use crate::state::AppState;

/// Liveness: 200 while the process serves HTTP.
#[get("/healthz")]
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "node_id": state.node_id,
    }))
}

/// Readiness: 200 when the database answers within the deadline and the node takes new calls;
/// 503 with a JSON reason otherwise.
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.is_draining() {
        return unavailable("draining", "node is shutting down");
    }
    let deadline = Duration::from_millis(state.readiness_timeout_ms);
    match tokio::time::timeout(deadline, state.store.ping()).await {
        Ok(Ok(())) => HttpResponse::Ok().json(json!({
            "status": "ready",
            "database": state.store.backend(),
        })),
        Ok(Err(err)) => unavailable("database_unavailable", &err.to_string()),
        Err(_) => unavailable(
            "database_unavailable",
            &format!("database did not answer within {} ms", deadline.as_millis()),
        ),
    }
}

fn unavailable(status: &str, reason: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(json!({ "status": status, "reason": reason }))
}

/// `GET /ops`: the live-calls dashboard, one self-contained page (no build step, no CDN). The
/// page holds no data; it reads the API with the token the operator enters.
#[get("/ops")]
pub async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"))
        .body(include_str!("dashboard.html"))
}
