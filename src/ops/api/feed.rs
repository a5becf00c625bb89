//! `GET /api/v1/events`: the live event feed as server-sent events — the admin's view of every
//! tenant or a tenant's own, keep-alives, `lagged` when a reader fell behind.

use super::*;

/// Query of `GET /api/v1/events`.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct EventsQuery {
    pub call_id: Option<Uuid>,
    pub tenant_id: Option<Uuid>,
}

/// Comment lines sent while no event comes, so proxies keep the stream open.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// How often an idle stream looks whether the node is draining.
const TICK: Duration = Duration::from_secs(1);

/// One event as SSE, if this reader wants it.
fn sse_event(
    event: &crate::call::events::LiveEvent,
    who: Caller,
    filter: EventsQuery,
) -> Option<web::Bytes> {
    let wanted = who.sees(event.tenant_id())
        && filter.call_id.is_none_or(|c| c == event.call_id())
        && filter.tenant_id.is_none_or(|t| t == event.tenant_id());
    wanted.then(|| {
        let data = serde_json::to_string(event).unwrap_or_default();
        web::Bytes::from(format!("event: {}\ndata: {data}\n\n", event.name()))
    })
}

fn sse_lagged(missed: u64) -> web::Bytes {
    web::Bytes::from(format!(
        "event: lagged\ndata: {{\"type\":\"lagged\",\"missed\":{missed}}}\n\n"
    ))
}

/// True once a draining node has no live call left (every `call.ended` is published).
async fn calls_drained(state: &AppState) -> bool {
    match tokio::time::timeout(TICK, state.registry.send(ListCalls)).await {
        Ok(Ok(calls)) => calls.is_empty(),
        Ok(Err(_)) => true,
        Err(_) => false,
    }
}

/// A stream's state between chunks.
struct FeedState {
    subscription: crate::call::events::Subscription,
    last_write: std::time::Instant,
    /// The node drained: deliver what is queued, then end.
    closing: bool,
}

/// `GET /api/v1/events[?call_id=…][&tenant_id=…]`: Server-Sent Events of the calls this caller
/// sees on this node — `call.started`, `turn.final` (sent once the turn is committed),
/// `call.ended` — as `event: <type>` / `data: <JSON>`. A tenant's reader (and an admin reader
/// that names a `tenant_id`) is subscribed to that tenant's own channel, so another tenant's
/// burst takes no room in its queue; an admin reader without `tenant_id` gets every tenant's.
/// A reader that falls more than `api.event_feed_capacity` events behind its channel gets
/// `event: lagged` with the number it missed instead of stalling the calls. Each token holds at
/// most `api.max_event_subscribers_per_token` streams (429 beyond); a stream's slot is freed
/// when it ends. When the node drains, a stream ends once the last call's `call.ended` is
/// delivered, so it does not hold up the shutdown.
#[get("/api/v1/events")]
pub async fn events(
    who: Caller,
    query: web::Query<EventsQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    use crate::call::events::{Holder, Scope};
    let filter = query.into_inner();
    let (holder, scope) = match who {
        Caller::Admin => (
            Holder::Admin,
            filter.tenant_id.map_or(Scope::All, Scope::Tenant),
        ),
        Caller::Tenant(own) => (Holder::Tenant(own), Scope::Tenant(own)),
    };
    // Subscribed before the answer goes out: a client that has the headers misses nothing.
    let subscription = match state.calls.events.subscribe(holder, scope) {
        Ok(subscription) => subscription,
        Err(full) => {
            return HttpResponse::TooManyRequests().json(json!({
                "error": format!(
                    "too many event streams for this token: at most {} at once \
                     (api.max_event_subscribers_per_token)",
                    full.limit
                ),
                "limit": full.limit,
            }))
        }
    };
    let hello = futures_util::stream::once(async {
        Ok::<_, actix_web::Error>(web::Bytes::from_static(b": subscribed\n\n"))
    });
    // The subscription lives in the stream: when the stream ends (client gone, node drained)
    // it is dropped and its token's slot is free again.
    let start = FeedState {
        subscription,
        last_write: std::time::Instant::now(),
        closing: false,
    };
    let feed = futures_util::stream::unfold(start, move |mut feed| {
        let state = state.clone();
        async move {
            let chunk = next_chunk(&mut feed, &state, who, filter).await?;
            feed.last_write = std::time::Instant::now();
            Some((Ok(chunk), feed))
        }
    });
    use futures_util::StreamExt as _;
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(hello.chain(feed))
}

/// The feed's next chunk: an event for this reader, a `lagged` notice or a keep-alive. `None`
/// ends the stream: the channel closed, or the node drained and every event left was sent.
async fn next_chunk(
    feed: &mut FeedState,
    state: &AppState,
    who: Caller,
    filter: EventsQuery,
) -> Option<web::Bytes> {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    loop {
        let chunk = if feed.closing {
            match feed.subscription.try_recv() {
                Ok(event) => match sse_event(&event, who, filter) {
                    Some(chunk) => chunk,
                    None => continue,
                },
                Err(TryRecvError::Lagged(missed)) => sse_lagged(missed),
                Err(_) => return None,
            }
        } else {
            match tokio::time::timeout(TICK, feed.subscription.recv()).await {
                Err(_) => {
                    if state.is_draining() && calls_drained(state).await {
                        feed.closing = true;
                        continue;
                    }
                    if feed.last_write.elapsed() < KEEPALIVE {
                        continue;
                    }
                    web::Bytes::from_static(b": keep-alive\n\n")
                }
                Ok(Ok(event)) => match sse_event(&event, who, filter) {
                    Some(chunk) => chunk,
                    None => continue,
                },
                Ok(Err(RecvError::Lagged(missed))) => sse_lagged(missed),
                Ok(Err(RecvError::Closed)) => return None,
            }
        };
        return Some(chunk);
    }
}
