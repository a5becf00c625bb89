//! `/api/v1`: the operator API over live call actors. Every request needs
//! `Authorization: Bearer <api.admin_token>`; with no token configured the API is disabled (503).
//! (Per-tenant tokens, call registration and transcripts come with the operator-surface work.)

use std::time::Duration;

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde_json::json;
use uuid::Uuid;

use crate::app::AppState;
use crate::call::actor::{Finish, Snapshot};
use crate::call::end::EndReason;
use crate::call::registry::{ListCalls, Lookup};

/// Checks the bearer token in constant time; `Err` is the response to send.
fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), Box<HttpResponse>> {
    let Some(expected) = &state.admin_token else {
        return Err(Box::new(HttpResponse::ServiceUnavailable().json(
            json!({ "error": "the API is disabled: set api.admin_token" }),
        )));
    };
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_eq(given.as_bytes(), expected.expose().as_bytes()) {
        Ok(())
    } else {
        Err(Box::new(
            HttpResponse::Unauthorized().json(json!({ "error": "missing or wrong bearer token" })),
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /api/v1/calls`: every live call actor on this node with its figures.
#[get("/api/v1/calls")]
pub async fn list_calls(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(denied) = authorize(&req, &state) {
        return *denied;
    }
    let Ok(calls) = state.registry.send(ListCalls).await else {
        return HttpResponse::InternalServerError()
            .json(json!({ "error": "registry unavailable" }));
    };
    let mut snapshots = Vec::with_capacity(calls.len());
    for (_, addr) in calls {
        if let Ok(Ok(snapshot)) =
            tokio::time::timeout(Duration::from_secs(2), addr.send(Snapshot)).await
        {
            snapshots.push(snapshot);
        }
    }
    HttpResponse::Ok().json(json!({ "calls": snapshots }))
}

/// `POST /api/v1/calls/{id}/hangup`: ends a live call through the normal flush path (202).
#[post("/api/v1/calls/{id}/hangup")]
pub async fn hangup(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(denied) = authorize(&req, &state) {
        return *denied;
    }
    let Ok(call_id) = Uuid::parse_str(&path) else {
        return HttpResponse::BadRequest().json(json!({ "error": "call id must be a UUID" }));
    };
    match state.registry.send(Lookup(call_id)).await {
        Ok(Some(addr)) => {
            addr.do_send(Finish(EndReason::OperatorHangup));
            HttpResponse::Accepted().json(json!({ "call_id": call_id, "status": "finishing" }))
        }
        Ok(None) => HttpResponse::NotFound()
            .json(json!({ "error": "no live call with this id on this node" })),
        Err(_) => {
            HttpResponse::InternalServerError().json(json!({ "error": "registry unavailable" }))
        }
    }
}
