//! The engine's `/api/v1/events` feed (Server-Sent Events), read on a thread of its own and
//! dispatched to the calls by external id. Carrier protocols get nothing back on their own
//! connection, so this is where their `call.started`, durable `turn.final` and `call.ended`
//! events come from; arrival times are taken as each line is read.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::{parse_value as parse, Seen};

type Routes = Arc<Mutex<HashMap<String, UnboundedSender<(Instant, Seen)>>>>;

/// A subscription to the feed.
#[derive(Clone)]
pub struct Feed {
    routes: Routes,
    /// Events the engine said it dropped because this reader fell behind.
    pub lagged: Arc<AtomicU64>,
}

impl Feed {
    /// Subscribes (the subscription is live when this returns) and starts the reader thread.
    pub fn subscribe(http_base: &str, token: &str) -> anyhow::Result<Self> {
        let url = format!("{http_base}/api/v1/events");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        let response = agent
            .get(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
        let routes: Routes = Arc::default();
        let lagged = Arc::new(AtomicU64::new(0));
        let feed = Self {
            routes: routes.clone(),
            lagged: lagged.clone(),
        };
        std::thread::spawn(move || {
            let reader = std::io::BufReader::new(response.into_body().into_reader());
            for line in reader.lines() {
                let Ok(line) = line else { break };
                let Some(data) = line.strip_prefix("data: ") else {
                    continue;
                };
                let at = Instant::now();
                let Ok(value) = serde_json::from_str::<serde_json::Value>(data) else {
                    continue;
                };
                if value["type"] == "lagged" {
                    lagged.fetch_add(value["missed"].as_u64().unwrap_or(1), Ordering::Relaxed);
                    continue;
                }
                let Some(seen) = parse(&value) else { continue };
                let Some(external_id) = value["external_id"].as_str() else {
                    continue;
                };
                let routes = routes.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(tx) = routes.get(external_id) {
                    let _ = tx.send((at, seen));
                }
            }
        });
        Ok(feed)
    }

    /// Events for `external_id` from now on.
    pub fn expect(&self, external_id: &str) -> UnboundedReceiver<(Instant, Seen)> {
        let (tx, rx) = unbounded_channel();
        self.lock().insert(external_id.to_string(), tx);
        rx
    }

    /// Stops routing `external_id`.
    pub fn forget(&self, external_id: &str) {
        self.lock().remove(external_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, UnboundedSender<(Instant, Seen)>>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_events_map_to_what_a_call_sees() {
        let id = uuid::Uuid::new_v4();
        let started = serde_json::json!({"type":"call.started","call_id":id,"external_id":"x"});
        assert!(matches!(parse(&started), Some(Seen::Started(got)) if got == id));
        let fin = serde_json::json!({"type":"turn.final","seq":3,"text":"hi","end_ms":6000});
        assert!(matches!(
            parse(&fin),
            Some(Seen::Final {
                seq: 3,
                end_ms: Some(6000),
                ..
            })
        ));
        assert!(matches!(
            parse(&serde_json::json!({"type":"call.ended"})),
            Some(Seen::Ended)
        ));
        assert!(parse(&serde_json::json!({"type":"other"})).is_none());
    }
}
