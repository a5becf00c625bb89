//! How a simulated call talks to the engine, one way per protocol, each as the real peer does
//! (PROTOCOLS.md): the generic `/ws/voice` socket, Vonage's `/ws/vonage` (a
//! `websocket:connected` message, then binary L16 16 kHz frames of exactly 640 bytes), Twilio
//! Media Streams on `/ws/twilio` (`connected`, `start`, base64 μ-law 8 kHz `media` messages,
//! `stop`), FreeSWITCH mod_audio_fork on `/ws/audiofork` (a metadata text frame, then binary
//! L16), and Asterisk AudioSocket over TCP (the 0x01 UUID, 0x12 slin 16 kHz frames, 0x00
//! hangup).
//!
//! The audio is encoded once per run ([`Frames`]); sending a frame is a slice or a formatted
//! string, so the load generator stays cheap next to the engine it measures.

use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedSender;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use super::protocol::{Frames, LoadProtocol, FRAME_BYTES, FRAME_MS};
use super::Seen;
use crate::media::audiosocket;

/// Who the call is for, as the engine reads it from each protocol.
pub struct CallIds<'a> {
    pub external_id: &'a str,
    pub tenant_id: Uuid,
    pub token: Option<&'a str>,
}

type WsSink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// One open call.
pub struct Link {
    protocol: LoadProtocol,
    out: Out,
    /// Resolves to the close code once the engine closes (a clean TCP close after an
    /// AudioSocket hangup counts as 1000).
    reader: tokio::task::JoinHandle<Option<u16>>,
    /// Twilio `streamSid`.
    stream_sid: String,
}

enum Out {
    Ws(WsSink),
    Tcp(tokio::net::tcp::OwnedWriteHalf),
}

/// Base URL for the protocol: `ws://host:port` as given.
fn ws_url(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

async fn connect_ws(
    url: &str,
    token: Option<&str>,
) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, String> {
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("bad URL {url}: {e}"))?;
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|e| format!("token is not a header value: {e}"))?;
        request.headers_mut().insert("authorization", value);
    }
    // TCP_NODELAY, as a carrier's media server sends: with Nagle's algorithm on, a frame
    // waits for the ACK of the one before, which the engine delays once it also sends on the
    // socket (the generic socket's events), adding ~20 ms to the forwarding lag it measures.
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_with_config(
            request,
            Some(crate::stt::deepgram::ws_config()),
            true,
        ),
    )
    .await
    {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(err)) => Err(format!("connect: {err}")),
        Err(_) => Err("connect timed out".into()),
    }
}

/// Reads the engine's side of a WebSocket: events (generic socket only) and the close code.
fn spawn_ws_reader(
    mut stream: futures_util::stream::SplitStream<WebSocketStream<MaybeTlsStream<TcpStream>>>,
    events: Option<UnboundedSender<(Instant, Seen)>>,
) -> tokio::task::JoinHandle<Option<u16>> {
    tokio::spawn(async move {
        while let Some(message) = stream.next().await {
            let Ok(message) = message else { break };
            match message {
                Message::Text(text) => {
                    let at = Instant::now();
                    if let (Some(tx), Some(seen)) = (&events, super::parse_event(&text)) {
                        let _ = tx.send((at, seen));
                    }
                }
                Message::Close(frame) => {
                    return Some(frame.map_or(1005, |f| u16::from(f.code)));
                }
                _ => {}
            }
        }
        None
    })
}

impl Link {
    /// Connects and performs the protocol's handshake. `events`: where the generic socket's
    /// events go.
    pub async fn open(
        protocol: LoadProtocol,
        base: &str,
        audiosocket_addr: &str,
        ids: &CallIds<'_>,
        events: Option<UnboundedSender<(Instant, Seen)>>,
    ) -> Result<Self, String> {
        let stream_sid = format!("MZ{}", Uuid::new_v4().simple());
        if protocol == LoadProtocol::Audiosocket {
            return Self::open_audiosocket(audiosocket_addr, ids, stream_sid).await;
        }
        let (path, header_token) = ws_path(protocol, ids);
        let ws = connect_ws(&ws_url(base, &path), header_token).await?;
        let (mut sink, stream) = ws.split();
        for text in first_messages(protocol, ids, &stream_sid) {
            sink.send(Message::Text(text.into()))
                .await
                .map_err(|e| format!("send: {e}"))?;
        }
        let events = if protocol.events_on_socket() {
            events
        } else {
            None
        };
        Ok(Self {
            protocol,
            out: Out::Ws(sink),
            reader: spawn_ws_reader(stream, events),
            stream_sid,
        })
    }

    /// AudioSocket over TCP: connects, sends the 0x01 message with the call's UUID, and reads
    /// until the engine closes.
    async fn open_audiosocket(
        audiosocket_addr: &str,
        ids: &CallIds<'_>,
        stream_sid: String,
    ) -> Result<Self, String> {
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            TcpStream::connect(audiosocket_addr),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect {audiosocket_addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut read, mut write) = stream.into_split();
        let uuid = Uuid::parse_str(ids.external_id).map_err(|e| format!("uuid: {e}"))?;
        write
            .write_all(&audiosocket::encode(0x01, uuid.as_bytes()))
            .await
            .map_err(|e| format!("send: {e}"))?;
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) => return Some(1000),
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
        });
        Ok(Self {
            protocol: LoadProtocol::Audiosocket,
            out: Out::Tcp(write),
            reader,
            stream_sid,
        })
    }

    /// Sends frame `k` of the call: `clip_index` into the clip, or silence.
    pub async fn send_frame(
        &mut self,
        frames: &Frames,
        k: u64,
        clip_index: Option<u64>,
    ) -> Result<(), String> {
        let sent = match (&mut self.out, frames) {
            (Out::Ws(sink), Frames::Pcm { clip, silence }) => {
                let frame = match clip_index {
                    Some(i) => {
                        let at = i as usize * FRAME_BYTES;
                        clip.slice(at..at + FRAME_BYTES)
                    }
                    None => silence.clone(),
                };
                sink.send(Message::Binary(frame))
                    .await
                    .map_err(|e| e.to_string())
            }
            (Out::Ws(sink), Frames::Base64 { clip, silence }) => {
                let payload = clip_index.map_or(silence, |i| &clip[i as usize]);
                let text = format!(
                    r#"{{"event":"media","sequenceNumber":"{}","media":{{"track":"inbound","chunk":"{}","timestamp":"{}","payload":"{payload}"}},"streamSid":"{}"}}"#,
                    k + 2,
                    k + 1,
                    k * FRAME_MS,
                    self.stream_sid
                );
                sink.send(Message::Text(text.into()))
                    .await
                    .map_err(|e| e.to_string())
            }
            (Out::Tcp(write), Frames::Socket { clip, silence }) => {
                let frame = clip_index.map_or(silence, |i| &clip[i as usize]);
                write.write_all(frame).await.map_err(|e| e.to_string())
            }
            _ => Err("audio encoded for another protocol".into()),
        };
        sent.map_err(|e| format!("send: {e}"))
    }

    /// Ends the call the protocol's way and waits (bounded) for the engine's close.
    pub async fn finish(self, frames_sent: u64) -> Result<Option<u16>, String> {
        let Self {
            protocol,
            out,
            reader,
            stream_sid,
        } = self;
        match out {
            Out::Ws(mut sink) => {
                if protocol == LoadProtocol::Twilio {
                    let stop = serde_json::json!({
                        "event": "stop",
                        "sequenceNumber": (frames_sent + 2).to_string(),
                        "streamSid": stream_sid,
                        "stop": {"accountSid": format!("AC{}", Uuid::nil().simple()), "callSid": ""},
                    });
                    let _ = sink.send(Message::Text(stop.to_string().into())).await;
                }
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "loadgen done".into(),
                    })))
                    .await;
            }
            Out::Tcp(mut write) => {
                let _ = write.write_all(&audiosocket::encode(0x00, &[])).await;
            }
        }
        match tokio::time::timeout(Duration::from_secs(15), reader).await {
            Ok(Ok(code)) => Ok(code),
            _ => Err("no close from the engine within 15 s".into()),
        }
    }

    /// Drops the connection abruptly: no stop message, no close frame, the socket just goes
    /// (the reader is stopped so both halves of the stream are released at once).
    pub fn abort(self) {
        self.reader.abort();
        drop(self.out);
    }

    /// After the call was ended from elsewhere (an API hang-up): waits (bounded) for the
    /// engine's close without sending one; past the limit, ends the call the normal way.
    pub async fn closed(mut self, frames_sent: u64) -> Result<Option<u16>, String> {
        match tokio::time::timeout(Duration::from_secs(15), &mut self.reader).await {
            Ok(Ok(code)) => Ok(code),
            Ok(Err(_)) => Err("the connection's reader failed".into()),
            Err(_) => self
                .finish(frames_sent)
                .await
                .and_then(|_| Err("the engine did not close within 15 s of the hang-up".into())),
        }
    }
}

/// The WebSocket path of the protocol's endpoint, and the token sent as a bearer header.
fn ws_path<'a>(protocol: LoadProtocol, ids: &CallIds<'a>) -> (String, Option<&'a str>) {
    let tenant = ids.tenant_id;
    match protocol {
        LoadProtocol::Voice => (
            format!(
                "/ws/voice/{}?tenant_id={tenant}&campaign_id={}&lead_id={}",
                ids.external_id,
                Uuid::new_v4(),
                Uuid::new_v4()
            ),
            ids.token,
        ),
        LoadProtocol::Vonage => ("/ws/vonage".to_string(), None),
        LoadProtocol::Twilio => ("/ws/twilio".to_string(), None),
        // (AudioSocket is opened over TCP instead.)
        LoadProtocol::Audiofork | LoadProtocol::Audiosocket => {
            ("/ws/audiofork".to_string(), ids.token)
        }
    }
}

/// The text messages a WebSocket protocol opens with, before any audio.
fn first_messages(protocol: LoadProtocol, ids: &CallIds<'_>, stream_sid: &str) -> Vec<String> {
    let tenant = ids.tenant_id;
    match protocol {
        LoadProtocol::Voice | LoadProtocol::Audiosocket => Vec::new(),
        LoadProtocol::Vonage => vec![serde_json::json!({
            "event": "websocket:connected",
            "content-type": "audio/l16;rate=16000",
            "uuid": ids.external_id,
            "tenant_id": tenant,
            "campaign_id": Uuid::new_v4(),
            "lead_id": Uuid::new_v4(),
            "token": ids.token,
        })
        .to_string()],
        LoadProtocol::Twilio => vec![
            serde_json::json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})
                .to_string(),
            serde_json::json!({
                "event": "start",
                "sequenceNumber": "1",
                "streamSid": stream_sid,
                "start": {
                    "streamSid": stream_sid,
                    "accountSid": format!("AC{}", Uuid::nil().simple()),
                    "callSid": ids.external_id,
                    "tracks": ["inbound"],
                    "customParameters": {
                        "tenant_id": tenant.to_string(),
                        "campaign_id": Uuid::new_v4().to_string(),
                        "lead_id": Uuid::new_v4().to_string(),
                        "token": ids.token,
                    },
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            })
            .to_string(),
        ],
        LoadProtocol::Audiofork => vec![serde_json::json!({
            "callSid": ids.external_id,
            "sampleRate": 16000,
            "mixType": "mono",
            "tenant_id": tenant,
            "campaign_id": Uuid::new_v4(),
            "lead_id": Uuid::new_v4(),
        })
        .to_string()],
    }
}
