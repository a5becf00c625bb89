//! The Asterisk AudioSocket TCP listener (`media.audiosocket_bind`).
//!
//! Admission is by source address (`media.audiosocket_allow`) and the node's limits; the tenant
//! is `media.audiosocket_tenant_id`; the first message must be the call's UUID (the external
//! id). Sessions are spread over a few arbiters. A reader task turns the byte stream into media
//! events with the pure [`crate::media::audiosocket::Decoder`]; the writer answers the engine's close
//! with an AudioSocket hangup (`00 00 00`) and closes the socket.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use actix_web::web;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::admission::{admit, Admitted, HandshakeSlot, UpgradeCredentials};
use crate::call::actor::{CallActor, CallParams};
use crate::call::outbound::Outbound;
use crate::media::audiosocket::{Decoder, Frame, FrameError};
use crate::media::normalize::{AudioFormat, Encoding, Normalizer};
use crate::media::MediaEvent;
use crate::state::AppState;
use crate::store::Protocol;

/// Events buffered from the socket towards the call before the reader waits.
const EVENT_QUEUE: usize = 256;

/// A bound listener, started later (once the application state exists).
pub struct AudioSocketListener {
    listener: std::net::TcpListener,
    allow: Vec<Option<IpAddr>>,
}

impl AudioSocketListener {
    /// Binds `bind` now so that a port in use is a start-up error.
    pub fn bind(bind: std::net::SocketAddr, allow: &str) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(bind)?;
        listener.set_nonblocking(true)?;
        let allow = allow
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| if a == "*" { None } else { a.parse().ok() })
            .collect();
        Ok(Self { listener, allow })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts sessions on a thread of arbiters of its own until the process ends.
    pub fn run(self, state: web::Data<AppState>) -> std::io::Result<()> {
        let arbiters: Vec<actix::ArbiterHandle> = (0..std::thread::available_parallelism()
            .map_or(2, |n| n.get()))
            .map(|_| actix::Arbiter::new().handle())
            .collect();
        let accept = actix::Arbiter::new();
        let Self { listener, allow } = self;
        accept.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(err) => {
                    tracing::error!(error = %err, "AudioSocket listener failed");
                    return;
                }
            };
            let mut next = 0usize;
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(pair) => pair,
                    Err(err) => {
                        tracing::warn!(error = %err, "AudioSocket accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                crate::net::tune(&tcp, crate::net::SocketKind::AudioSocket);
                let allowed = allow.iter().any(|a| {
                    a.is_none_or(|ip| {
                        ip == peer.ip() || ip.to_canonical() == peer.ip().to_canonical()
                    })
                });
                if !allowed {
                    tracing::warn!(%peer, "AudioSocket connection refused: address not allowed");
                    drop(tcp);
                    continue;
                }
                if state.is_draining() {
                    drop(tcp);
                    continue;
                }
                let Some(slot) = state.handshakes.try_take() else {
                    tracing::warn!(%peer, "AudioSocket connection refused: too many handshakes");
                    drop(tcp);
                    continue;
                };
                let arbiter = &arbiters[next % arbiters.len()];
                next = next.wrapping_add(1);
                arbiter.spawn(session(state.clone(), tcp, peer, slot));
            }
        });
        Ok(())
    }
}

async fn session(
    state: web::Data<AppState>,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: HandshakeSlot,
) {
    let _ = tcp.set_nodelay(true);
    let (mut read, mut write) = tcp.into_split();
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; 8 * 1024];
    // One deadline for the whole handshake, however the bytes trickle in.
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(state.media.handshake_timeout_ms);
    // Handshake: the first message must be the call's UUID.
    let Some(uuid) = read_uuid(&mut read, &mut decoder, &mut buf, deadline, peer).await else {
        return;
    };
    // A call registered beforehand through the API with this UUID gives the tenant, campaign
    // and lead; otherwise the listener's tenant.
    let registered = state
        .store
        .calls_by_external_id(&uuid.to_string())
        .await
        .ok()
        .and_then(|calls| {
            calls
                .into_iter()
                .find(|c| c.protocol == Protocol::Api && c.ended_at.is_none())
        });
    let Some(default_tenant) = state.media.audiosocket_tenant_id else {
        return;
    };
    let tenant_id = registered.as_ref().map_or(default_tenant, |c| c.tenant_id);
    // The listener admits by source address; the tenant must still exist and its caps apply.
    let credentials = UpgradeCredentials {
        trusted_listener: true,
        ..Default::default()
    };
    let admitted = admit(&state, tenant_id, None, &credentials, Protocol::AudioSocket).await;
    drop(slot);
    let permit = match admitted {
        Ok(Admitted { permit, .. }) => permit,
        Err(refusal) => {
            tracing::warn!(%peer, %uuid, code = refusal.code, reason = %refusal.reason,
                "AudioSocket session refused");
            let _ = write
                .write_all(&crate::media::audiosocket::encode(0xff, &[0x04]))
                .await;
            return;
        }
    };
    let params = CallParams {
        call_id: registered.as_ref().map(|c| c.id),
        tenant_id,
        campaign_id: registered.as_ref().and_then(|c| c.campaign_id),
        lead_id: registered.as_ref().and_then(|c| c.lead_id),
        phone_number: registered.as_ref().map(|c| c.phone_number.clone()),
        external_id: Some(uuid.to_string()),
        protocol: Protocol::AudioSocket,
        speakers: vec!["contact".into()],
        metadata: Some(serde_json::json!({ "peer": peer.to_string() })),
    };
    let (events_tx, events_rx) = mpsc::channel::<MediaEvent>(EVENT_QUEUE);
    actix_web::rt::spawn(read_loop(read, decoder, buf, events_tx));
    let out_tx = spawn_writer(write);
    let input = futures_util::stream::unfold(events_rx, |mut rx| async move {
        rx.recv().await.map(|event| (event, rx))
    })
    .boxed_local();
    CallActor::new(
        Arc::clone(&state.calls),
        params,
        input,
        out_tx,
        Some(permit),
    )
    .start();
}

/// The handshake: the first message must be the call's UUID, within the deadline.
async fn read_uuid(
    read: &mut tokio::net::tcp::OwnedReadHalf,
    decoder: &mut Decoder,
    buf: &mut [u8],
    deadline: tokio::time::Instant,
    peer: SocketAddr,
) -> Option<uuid::Uuid> {
    loop {
        match decoder.next_frame() {
            Ok(Some(Frame::Uuid(uuid))) => return Some(uuid),
            Ok(Some(other)) => {
                tracing::warn!(%peer, ?other, "AudioSocket session refused: the first message is not the UUID");
                return None;
            }
            Err(err) => {
                tracing::warn!(%peer, error = %err, "AudioSocket session refused");
                return None;
            }
            Ok(None) => {}
        }
        match tokio::time::timeout_at(deadline, read.read(buf)).await {
            Ok(Ok(n)) if n > 0 => decoder.push(&buf[..n]),
            _ => {
                tracing::warn!(%peer, "AudioSocket session ended before its UUID");
                return None;
            }
        }
    }
}

/// The session's one writer: nothing is sent back but the hang-up (kind 0x00) on the close.
fn spawn_writer(mut write: tokio::net::tcp::OwnedWriteHalf) -> mpsc::Sender<Outbound> {
    let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(16);
    actix_web::rt::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            if let Outbound::Close(..) = message {
                let _ = write.write_all(&[0x00, 0x00, 0x00]).await;
                let _ = write.shutdown().await;
                return;
            }
        }
        let _ = write.shutdown().await;
    });
    out_tx
}

async fn read_loop(
    mut read: tokio::net::tcp::OwnedReadHalf,
    mut decoder: Decoder,
    mut buf: Vec<u8>,
    events: mpsc::Sender<MediaEvent>,
) {
    let mut normalizer: Option<Normalizer> = None;
    loop {
        loop {
            let event = match decoder.next_frame() {
                Ok(None) => break,
                Ok(Some(Frame::Audio { sample_rate, pcm })) => {
                    for event in audio_events(&mut normalizer, sample_rate, pcm) {
                        if !send(&events, event).await {
                            return;
                        }
                    }
                    continue;
                }
                Ok(Some(Frame::Dtmf(digit))) => MediaEvent::Dtmf(digit.to_string()),
                Ok(Some(Frame::Hangup)) => {
                    send(&events, MediaEvent::Closed).await;
                    return;
                }
                Ok(Some(Frame::Error(code))) => {
                    let event = match code {
                        Some(0x01) => MediaEvent::Closed,
                        other => MediaEvent::Lost(format!("Asterisk reported error {other:?}")),
                    };
                    send(&events, event).await;
                    return;
                }
                Ok(Some(Frame::Uuid(_))) => MediaEvent::Ignored("second UUID".into()),
                Err(err) => {
                    send(
                        &events,
                        MediaEvent::ProtocolError {
                            too_big: matches!(err, FrameError::TooLong(_)),
                            detail: err.to_string(),
                        },
                    )
                    .await;
                    return;
                }
            };
            if !send(&events, event).await {
                return;
            }
        }
        match read.read(&mut buf).await {
            Ok(0) => {
                let event = match decoder.finish() {
                    Ok(()) => MediaEvent::Closed,
                    Err(err) => MediaEvent::ProtocolError {
                        too_big: false,
                        detail: err.to_string(),
                    },
                };
                send(&events, event).await;
                return;
            }
            Ok(n) => decoder.push(&buf[..n]),
            Err(err) => {
                send(&events, MediaEvent::Lost(err.to_string())).await;
                return;
            }
        }
    }
}

/// An audio message as the call's events: 16 kHz frames (the normaliser follows the rate
/// each message names), or `Invalid` for a payload that is not whole samples.
fn audio_events(
    normalizer: &mut Option<Normalizer>,
    sample_rate: u32,
    pcm: Vec<u8>,
) -> Vec<MediaEvent> {
    if !pcm.len().is_multiple_of(2) || pcm.is_empty() {
        return vec![MediaEvent::Invalid(format!(
            "{} bytes of slin is not whole samples",
            pcm.len()
        ))];
    }
    if normalizer
        .as_ref()
        .is_none_or(|n| n.format().sample_rate != sample_rate)
    {
        *normalizer = Normalizer::new(AudioFormat {
            encoding: Encoding::L16,
            sample_rate,
            channels: 1,
        })
        .ok();
    }
    let Some(n) = normalizer.as_mut() else {
        return Vec::new();
    };
    crate::media::audio_events(n, &bytes::Bytes::from(pcm))
}

/// False when the call is gone.
async fn send(events: &mpsc::Sender<MediaEvent>, event: MediaEvent) -> bool {
    events.send(event).await.is_ok()
}
