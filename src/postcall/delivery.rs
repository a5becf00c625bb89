//! The webhook senders: claim a queued delivery, sign it with the tenant's secret, send it
//! through the egress policy, record the attempt and its next time.

use super::*;
use crate::store::Delivery;

impl Pipeline {
    /// The signing secret of a delivery's tenant. An error when it cannot be read now or the
    /// tenant has none: a webhook is never sent unsigned.
    async fn webhook_secret(&self, call_id: Option<uuid::Uuid>) -> Result<String, String> {
        let call_id = call_id.ok_or("the delivery names no call")?;
        let call = self
            .store
            .get_call(call_id)
            .await
            .map_err(|e| format!("cannot read the call: {e}"))?
            .ok_or("the delivery's call is gone")?;
        let tenant = self
            .store
            .get_tenant(call.tenant_id)
            .await
            .map_err(|e| format!("cannot read the tenant's webhook secret: {e}"))?
            .ok_or("the call's tenant is gone")?;
        tenant
            .webhook_secret
            .map(|s| s.expose().to_string())
            .ok_or_else(|| {
                "the tenant has no webhook secret; webhooks are never sent unsigned".into()
            })
    }

    pub(super) async fn delivery_loop(self: Arc<Self>) {
        let timeout = Duration::from_millis(self.settings.webhook_timeout_ms.max(1));
        // A sender that crashed mid-attempt leaves the delivery `sending`; it is due again
        // after this long.
        let lease = timeout * 3;
        while !self.cancel.is_cancelled() {
            let delivery = match self.store.claim_delivery(lease).await {
                Ok(Some(d)) => d,
                Ok(None) => {
                    self.idle().await;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot claim webhook deliveries");
                    self.idle().await;
                    continue;
                }
            };
            self.deliver_one(&delivery, timeout).await;
        }
    }

    /// One attempt at one claimed delivery, signed, and its outcome recorded with the next
    /// attempt's time (none: dead).
    async fn deliver_one(&self, delivery: &Delivery, timeout: Duration) {
        // Never sent unsigned: a secret that cannot be looked up now is a failed attempt,
        // retried on the schedule like any other.
        let secret = match self.webhook_secret(delivery.call_id).await {
            Ok(secret) => secret,
            Err(error) => {
                tracing::warn!(delivery = %delivery.id, %error, "webhook not sent");
                let retry_at =
                    deliver::next_attempt(&self.schedule, delivery.attempts as usize, Utc::now());
                self.metrics
                    .webhook(if retry_at.is_some() { "retry" } else { "dead" });
                if let Err(err) = self
                    .store
                    .record_delivery_attempt(delivery.id, false, None, None, Some(error), retry_at)
                    .await
                {
                    tracing::warn!(error = %err, "cannot record a webhook attempt");
                }
                return;
            }
        };
        let (url, event, payload) = (
            delivery.url.clone(),
            delivery.event_id.clone(),
            delivery.payload.clone(),
        );
        let egress = self.egress.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            deliver::attempt(&egress, &url, &event, &payload, &secret, timeout)
        })
        .await
        .unwrap_or_else(|e| deliver::AttemptResult {
            delivered: false,
            status: None,
            body: None,
            error: Some(e.to_string()),
        });
        let retry_at = (!outcome.delivered)
            .then(|| deliver::next_attempt(&self.schedule, delivery.attempts as usize, Utc::now()))
            .flatten();
        tracing::info!(event_id = %delivery.event_id, attempt = delivery.attempts,
            delivered = outcome.delivered, status = ?outcome.status, error = ?outcome.error,
            dead = !outcome.delivered && retry_at.is_none(), "webhook attempt");
        self.metrics
            .webhook(match (outcome.delivered, retry_at.is_some()) {
                (true, _) => "delivered",
                (false, true) => "retry",
                (false, false) => "dead",
            });
        if let Err(err) = self
            .store
            .record_delivery_attempt(
                delivery.id,
                outcome.delivered,
                outcome.status.map(i32::from),
                outcome.body,
                outcome.error,
                retry_at,
            )
            .await
        {
            tracing::error!(error = %err, "cannot record a webhook attempt");
        }
    }
}
