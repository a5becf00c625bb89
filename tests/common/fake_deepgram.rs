//! A local stand-in for Deepgram's streaming API (v1 `/v1/listen` and Flux `/v2/listen`) over a
//! real WebSocket, implementing the documented message shapes.
//!
//! Transcripts come from the audio itself, so they do not depend on which stream heard it: the
//! test audio is made of "speech" runs whose samples all hold `100 × n` for turn `n`, separated
//! by silence (zeros). While a run lasts the fake sends interims (v1) or `Update`s (Flux) saying
//! `turn n`; when silence follows it sends the final (`speech_final`, or Flux `EndOfTurn`)
//! `turn n words`, with times relative to the stream's start as Deepgram does. Faults can be
//! queued per connection: drop the socket, stall silently, or close with 1011; auth can be
//! refused with an HTTP status.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
// tungstenite's handshake callback type fixes the large `Err` variant.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// The key the fake accepts.
pub const KEY: &str = "test-deepgram-key";

/// A fault for one connection, at a point in that stream's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    DropAfterMs(u64),
    StallAfterMs(u64),
    Close1011AfterMs(u64),
}

/// What the fake saw, and what it will do.
#[derive(Debug, Default, Clone)]
pub struct FakeState {
    pub connections: usize,
    pub rejected: usize,
    pub paths: Vec<String>,
    pub auth_headers: Vec<String>,
    pub keepalives: usize,
    pub finalizes: usize,
    pub close_streams: usize,
    pub audio_ms: Vec<u64>,
    pub faults: VecDeque<Fault>,
    pub reject_status: Option<u16>,
}

/// A running fake.
pub struct FakeDeepgram {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeDeepgram {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, shared.clone()));
            }
        });
        Self { addr, state }
    }

    /// `ws://` base URL for the engine's settings.
    pub fn base_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Queues faults for the next connections, in order.
    pub fn faults(&self, faults: &[Fault]) {
        self.state
            .lock()
            .unwrap()
            .faults
            .extend(faults.iter().copied());
    }
}

async fn serve(tcp: tokio::net::TcpStream, state: Arc<Mutex<FakeState>>) {
    let mut path = String::new();
    let reject = state.lock().unwrap().reject_status;
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        path = request.uri().to_string();
        let auth = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut s = state.lock().unwrap();
        s.auth_headers.push(auth.clone());
        let status = reject.or(if auth == format!("Token {KEY}") {
            None
        } else {
            Some(401)
        });
        if let Some(status) = status {
            s.rejected += 1;
            let body = Some(format!("{{\"err_code\":\"{status}\"}}"));
            return Err(tokio_tungstenite::tungstenite::http::Response::builder()
                .status(status)
                .body(body)
                .unwrap());
        }
        Ok(response)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    let fault = {
        let mut s = state.lock().unwrap();
        s.connections += 1;
        s.paths.push(path.clone());
        s.audio_ms.push(0);
        s.faults.pop_front().unwrap_or(Fault::None)
    };
    let index = state.lock().unwrap().audio_ms.len() - 1;
    let flux = path.starts_with("/v2/listen");
    let (mut sink, mut stream) = ws.split();
    let mut stream_ms: u64 = 0;
    let mut run: Option<(i16, u64)> = None; // (turn value, start ms)
    let mut last_interim_ms = 0;
    let mut turn_index = 0u64;
    let mut stalled = false;
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Binary(audio) => {
                for unit in audio.chunks(640) {
                    let value = i16::from_le_bytes([unit[0], unit[1]]) / 100;
                    let at = stream_ms;
                    stream_ms += (unit.len() as u64 / 2) * 1000 / 16_000;
                    state.lock().unwrap().audio_ms[index] = stream_ms;
                    match fault {
                        Fault::DropAfterMs(x) if stream_ms >= x => return,
                        Fault::StallAfterMs(x) if stream_ms >= x => stalled = true,
                        Fault::Close1011AfterMs(x) if stream_ms >= x => {
                            let frame = CloseFrame {
                                code: CloseCode::Error,
                                reason: "internal".into(),
                            };
                            let _ = sink.send(Message::Close(Some(frame))).await;
                            return;
                        }
                        _ => {}
                    }
                    if stalled {
                        continue;
                    }
                    let mut out = Vec::new();
                    match (run, value) {
                        (None, v) if v > 0 => {
                            run = Some((v, at));
                            last_interim_ms = at;
                            if flux {
                                out.push(turn_info("StartOfTurn", turn_index, "", at, at));
                            }
                        }
                        (Some((v, start)), now_value)
                            if now_value == v && stream_ms - last_interim_ms >= 240 =>
                        {
                            last_interim_ms = stream_ms;
                            out.push(if flux {
                                turn_info(
                                    "Update",
                                    turn_index,
                                    &format!("turn {v}"),
                                    start,
                                    stream_ms,
                                )
                            } else {
                                results(&format!("turn {v}"), start, stream_ms, false, false)
                            });
                        }
                        (Some((v, _)), now_value) if now_value == v => {}
                        (Some((v, start)), next) => {
                            out.push(if flux {
                                turn_info(
                                    "EndOfTurn",
                                    turn_index,
                                    &format!("turn {v} words"),
                                    start,
                                    at,
                                )
                            } else {
                                results(&format!("turn {v} words"), start, at, true, true)
                            });
                            turn_index += 1;
                            run = if next > 0 { Some((next, at)) } else { None };
                        }
                        _ => {}
                    }
                    for text in out {
                        if sink.send(Message::Text(text.into())).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Message::Text(text) => {
                let kind = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(String::from));
                match kind.as_deref() {
                    Some("KeepAlive") => state.lock().unwrap().keepalives += 1,
                    Some("Finalize") => {
                        state.lock().unwrap().finalizes += 1;
                        if let (false, Some((v, start))) = (flux, run.take()) {
                            let _ = sink
                                .send(Message::Text(
                                    results(
                                        &format!("turn {v} words"),
                                        start,
                                        stream_ms,
                                        true,
                                        false,
                                    )
                                    .into(),
                                ))
                                .await;
                        }
                    }
                    Some("CloseStream") => {
                        state.lock().unwrap().close_streams += 1;
                        if !flux {
                            let metadata = json!({"type": "Metadata", "request_id": "fake", "duration": stream_ms as f64 / 1000.0});
                            let _ = sink.send(Message::Text(metadata.to_string().into())).await;
                        }
                        // Flux sends no EndOfTurn on CloseStream: the engine keeps the last Update.
                        let _ = sink
                            .send(Message::Close(Some(CloseFrame {
                                code: CloseCode::Normal,
                                reason: "".into(),
                            })))
                            .await;
                        return;
                    }
                    _ => {}
                }
            }
            Message::Close(_) => return,
            _ => {}
        }
    }
}

fn results(
    transcript: &str,
    start_ms: u64,
    end_ms: u64,
    is_final: bool,
    speech_final: bool,
) -> String {
    json!({
        "type": "Results", "channel_index": [0, 1],
        "start": start_ms as f64 / 1000.0, "duration": (end_ms - start_ms) as f64 / 1000.0,
        "is_final": is_final, "speech_final": speech_final,
        "channel": {"alternatives": [{"transcript": transcript, "confidence": 0.95, "words": []}]},
        "metadata": {"request_id": "fake"}
    })
    .to_string()
}

fn turn_info(event: &str, turn_index: u64, transcript: &str, start_ms: u64, end_ms: u64) -> String {
    json!({
        "type": "TurnInfo", "event": event, "turn_index": turn_index,
        "audio_window_start": start_ms as f64 / 1000.0, "audio_window_end": end_ms as f64 / 1000.0,
        "transcript": transcript, "words": [], "end_of_turn_confidence": 0.9
    })
    .to_string()
}

/// Test audio: `turns` runs of 1 s "speech" (samples = 100 × turn number), each followed by
/// 300 ms of silence.
pub fn coded_audio(turns: i16) -> Vec<u8> {
    let mut pcm = Vec::new();
    for n in 1..=turns {
        for _ in 0..16_000 {
            pcm.extend_from_slice(&(n * 100).to_le_bytes());
        }
        pcm.extend(std::iter::repeat_n(0u8, 300 * 32));
    }
    pcm
}
