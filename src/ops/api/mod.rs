//! `/api/v1`: the operator API. Every request needs `Authorization: Bearer <token>`: the admin
//! token (`api.admin_token`) sees every tenant; a tenant's own API token sees only its calls.
//! Missing or unknown token: 401 and no data.

mod feed;

pub use feed::events;

use std::time::Duration;

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde_json::json;
use uuid::Uuid;

use crate::call::actor::{Finish, Snapshot};
use crate::call::end::EndReason;
use crate::call::registry::{ListCalls, Lookup};
use crate::http_error::ApiError;
use crate::state::AppState;

/// Who is asking: the operator (admin token) sees everything; a tenant (its own API token)
/// sees only its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Tenant(Uuid),
}

impl Caller {
    /// Whether this caller may see `tenant_id`'s data.
    pub fn sees(self, tenant_id: Uuid) -> bool {
        match self {
            Self::Admin => true,
            Self::Tenant(own) => own == tenant_id,
        }
    }
}

/// Resolves the bearer token: the admin token (constant-time compare), else a tenant's token
/// (looked up by its SHA-256). Missing or unknown: 401, no data.
async fn caller(req: &HttpRequest, state: &AppState) -> Result<Caller, ApiError> {
    let given = super::bearer(req);
    if given.is_empty() {
        return Err(ApiError::unauthorized());
    }
    if let Some(admin) = &state.admin_token {
        if constant_time_eq(given.as_bytes(), admin.expose().as_bytes()) {
            return Ok(Caller::Admin);
        }
    }
    match state.store.tenant_by_api_token(given).await {
        Ok(Some(tenant)) => Ok(Caller::Tenant(tenant.id)),
        Ok(None) => Err(ApiError::unauthorized()),
        Err(err) => {
            tracing::warn!(error = %err, "a bearer token could not be checked");
            Err(ApiError::unavailable("cannot check the token now").retry_after(1))
        }
    }
}

/// The operator only: the admin token (a tenant's token: 403).
#[derive(Debug, Clone, Copy)]
pub struct Admin;

/// The bearer token's [`Caller`] as a handler argument: a request without a valid token is
/// answered (401, 403 for [`Admin`], 503 when the token cannot be checked) before the handler
/// runs.
impl actix_web::FromRequest for Caller {
    type Error = actix_web::Error;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let Some(state) = req.app_data::<web::Data<AppState>>() else {
                return Err(actix_web::error::ErrorInternalServerError("no app state"));
            };
            Ok(caller(&req, state).await?)
        })
    }
}

impl actix_web::FromRequest for Admin {
    type Error = actix_web::Error;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let who = Caller::from_request(req, payload);
        Box::pin(async move {
            match who.await? {
                Caller::Admin => Ok(Admin),
                Caller::Tenant(_) => Err(ApiError::forbidden("this needs the admin token").into()),
            }
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    crate::crypto::constant_time_eq(a, b)
}

/// Query of `GET /api/v1/calls`.
#[derive(Debug, serde::Deserialize)]
pub struct CallsQuery {
    pub tenant_id: Option<Uuid>,
    /// `starting`, `live`, `finishing`.
    pub state: Option<String>,
}

/// `GET /api/v1/calls`: the live call actors on this node with their figures, filtered by
/// tenant and state (a tenant's token sees only its own).
#[get("/api/v1/calls")]
pub async fn list_calls(
    who: Caller,
    query: web::Query<CallsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let calls = state
        .registry
        .send(ListCalls)
        .await
        .map_err(|err| ApiError::internal("registry unavailable", err))?;
    let mut snapshots = Vec::with_capacity(calls.len());
    for (_, addr) in calls {
        if let Ok(Ok(snapshot)) =
            tokio::time::timeout(Duration::from_secs(2), addr.send(Snapshot)).await
        {
            let wanted = who.sees(snapshot.tenant_id)
                && query.tenant_id.is_none_or(|t| t == snapshot.tenant_id)
                && query.state.as_deref().is_none_or(|s| s == snapshot.state);
            if wanted {
                snapshots.push(snapshot);
            }
        }
    }
    Ok(HttpResponse::Ok().json(json!({ "calls": snapshots })))
}

/// The call if this caller may see it.
async fn visible_call(
    state: &AppState,
    who: Caller,
    raw_id: &str,
) -> Result<crate::store::Call, ApiError> {
    let call_id =
        Uuid::parse_str(raw_id).map_err(|_| ApiError::bad_request("call id must be a UUID"))?;
    match state.store.get_call(call_id).await? {
        Some(call) if who.sees(call.tenant_id) => Ok(call),
        _ => Err(ApiError::not_found("no such call")),
    }
}

/// `GET /api/v1/calls/{id}`: the database row, and the live actor's figures when it is live
/// on this node.
#[get("/api/v1/calls/{id}")]
pub async fn get_call(
    who: Caller,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let call = visible_call(&state, who, &path).await?;
    let live = match state.registry.send(Lookup(call.id)).await {
        Ok(Some(addr)) => tokio::time::timeout(Duration::from_secs(2), addr.send(Snapshot))
            .await
            .ok()
            .and_then(Result::ok),
        _ => None,
    };
    Ok(HttpResponse::Ok().json(json!({ "call": call, "live": live })))
}

/// `GET /api/v1/calls/by-external/{external_id}`: the calls (any protocol, live or ended) that
/// arrived with this transport id — a Twilio CallSid, a Vonage or AudioSocket UUID, a
/// conversation id — newest last.
#[get("/api/v1/calls/by-external/{external_id}")]
pub async fn calls_by_external(
    who: Caller,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let calls = state.store.calls_by_external_id(&path).await?;
    let visible: Vec<_> = calls
        .into_iter()
        .filter(|c| who.sees(c.tenant_id))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "calls": visible })))
}

/// Query of the transcript endpoint.
#[derive(Debug, serde::Deserialize)]
pub struct TranscriptQuery {
    /// `json` (default) or `text`.
    pub format: Option<String>,
}

/// `GET /api/v1/calls/{id}/transcript[?format=text]`: the call's turns as JSON, or as
/// `speaker: text` lines.
#[get("/api/v1/calls/{id}/transcript")]
pub async fn transcript(
    who: Caller,
    path: web::Path<String>,
    query: web::Query<TranscriptQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let call = visible_call(&state, who, &path).await?;
    let turns = state.store.list_turns(call.id).await?;
    let text: String = turns
        .iter()
        .map(|t| format!("{}: {}\n", t.speaker, t.text))
        .collect();
    match query.format.as_deref() {
        Some("text") => Ok(HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(text)),
        None | Some("json") => Ok(HttpResponse::Ok().json(json!({
            "call_id": call.id, "status": call.status, "turns": turns, "text": text,
        }))),
        Some(other) => Err(ApiError::bad_request(format!(
            "format must be json or text, not {:?}",
            crate::text::bounded(other, 32)
        ))),
    }
}

/// Body of `POST /api/v1/calls`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterCall {
    /// Required with the admin token; a tenant's token registers for itself.
    pub tenant_id: Option<Uuid>,
    pub campaign_id: Option<Uuid>,
    pub lead_id: Option<Uuid>,
    /// The id the call will arrive with: a conversation id (ElevenLabs), an AudioSocket UUID…
    pub external_id: Option<String>,
    /// Alias of `external_id` for voice platforms.
    pub conversation_id: Option<String>,
    pub phone_number: Option<String>,
    /// `inbound` (default) or `outbound`.
    pub direction: Option<String>,
}

/// `POST /api/v1/calls`: registers an expected call (201 with its id). Webhook turns with this
/// conversation id and AudioSocket sessions with this UUID link to it; carrier streams link by
/// passing `call_id`.
#[post("/api/v1/calls")]
pub async fn register_call(
    who: Caller,
    body: web::Json<RegisterCall>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let tenant_id = match (who, body.tenant_id) {
        (Caller::Tenant(own), None) => own,
        (Caller::Tenant(own), Some(t)) if t == own => own,
        (Caller::Tenant(_), Some(_)) => {
            return Err(ApiError::forbidden(
                "a tenant token registers calls for its own tenant",
            ))
        }
        (Caller::Admin, Some(t)) => t,
        (Caller::Admin, None) => return Err(ApiError::bad_request("missing field tenant_id")),
    };
    let external_id = body.external_id.or(body.conversation_id);
    if external_id
        .as_ref()
        .is_some_and(|e| e.is_empty() || e.len() > 256)
    {
        return Err(ApiError::bad_request(
            "external_id must be 1 to 256 characters",
        ));
    }
    let direction = match body.direction.as_deref() {
        None | Some("inbound") => crate::store::Direction::Inbound,
        Some("outbound") => crate::store::Direction::Outbound,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "direction must be inbound or outbound, not {:?}",
                crate::text::bounded(other, 32)
            )))
        }
    };
    let new = crate::store::NewCall {
        id: None,
        tenant_id,
        campaign_id: body.campaign_id,
        lead_id: body.lead_id,
        phone_number: body.phone_number,
        external_id,
        protocol: crate::store::Protocol::Api,
        direction,
        started_at: chrono::Utc::now(),
        media_metadata: None,
    };
    let (call, _) = state.store.create_or_link_call(&new).await?;
    Ok(HttpResponse::Created().json(json!({ "call": call })))
}

/// `POST /api/v1/calls/{id}/hangup`: ends a live call through the normal flush path (202).
#[post("/api/v1/calls/{id}/hangup")]
pub async fn hangup(
    who: Caller,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let call_id = visible_call(&state, who, &path).await?.id;
    let live = state
        .registry
        .send(Lookup(call_id))
        .await
        .map_err(|err| ApiError::internal("registry unavailable", err))?;
    let addr = live.ok_or_else(|| ApiError::not_found("no live call with this id on this node"))?;
    addr.do_send(Finish(EndReason::OperatorHangup));
    Ok(HttpResponse::Accepted().json(json!({ "call_id": call_id, "status": "finishing" })))
}

/// Query of `GET /api/v1/jobs`.
#[derive(Debug, serde::Deserialize)]
pub struct JobsQuery {
    /// `queued`, `running`, `done` or `dead` (default `dead`).
    pub status: Option<String>,
}

/// `GET /api/v1/jobs?status=dead`: post-call jobs in one state (dead ones carry their last
/// error).
#[get("/api/v1/jobs")]
pub async fn list_jobs(
    _admin: Admin,
    query: web::Query<JobsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let status = query.status.clone().unwrap_or_else(|| "dead".into());
    if !["queued", "running", "done", "dead"].contains(&status.as_str()) {
        return Err(ApiError::bad_request(
            "status must be queued, running, done or dead",
        ));
    }
    let jobs = state.store.jobs_with_status(&status).await?;
    Ok(
        HttpResponse::Ok().json(json!({ "jobs": jobs.iter().map(|j| json!({
        "id": j.id, "kind": j.kind, "call_id": j.call_id, "status": j.status,
        "attempts": j.attempts, "max_attempts": j.max_attempts, "run_at": j.run_at,
        "last_error": j.last_error,
    })).collect::<Vec<_>>() })),
    )
}

/// `GET /api/v1/calls/{id}/deliveries`: a call's webhook deliveries.
#[get("/api/v1/calls/{id}/deliveries")]
pub async fn call_deliveries(
    who: Caller,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let call_id = visible_call(&state, who, &path).await?.id;
    let deliveries = state.store.deliveries_for_call(call_id).await?;
    Ok(
        HttpResponse::Ok().json(json!({ "deliveries": deliveries.iter().map(|d| json!({
        "id": d.id, "event_id": d.event_id, "event_type": d.event_type, "url": d.url,
        "status": d.status, "attempts": d.attempts, "next_attempt_at": d.next_attempt_at,
        "last_response_status": d.last_response_status, "last_error": d.last_error,
        "delivered_at": d.delivered_at,
    })).collect::<Vec<_>>() })),
    )
}

/// `POST /api/v1/deliveries/{id}/resend`: sends an undelivered (e.g. dead) webhook again now,
/// with a fresh retry schedule (202), or 409 when it was delivered.
#[post("/api/v1/deliveries/{id}/resend")]
pub async fn resend_delivery(
    _admin: Admin,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id =
        Uuid::parse_str(&path).map_err(|_| ApiError::bad_request("delivery id must be a UUID"))?;
    if state.store.resend_delivery(id).await? {
        Ok(HttpResponse::Accepted().json(json!({ "id": id, "status": "pending" })))
    } else {
        Err(ApiError::conflict("no undelivered delivery with this id"))
    }
}
