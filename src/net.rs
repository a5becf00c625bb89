//! TCP sockets the engine opens or accepts: every one gets `TCP_NODELAY`, and every one is
//! counted with what its socket option actually says (`callengine_tcp_connections_total{socket,
//! nodelay}`), so a socket left with Nagle's algorithm on shows up in `/metrics` and fails the
//! test that checks each kind.
//!
//! Why: a 20 ms audio frame is a small write. With Nagle on, a write waits for the ACK of the
//! previous one; with the peer's delayed ACKs that held about one frame in ten back by a whole
//! frame period on the provider socket. Outbound HTTP (webhooks, recordings) goes through ureq,
//! whose agents set `TCP_NODELAY` by default.

use std::sync::atomic::{AtomicU64, Ordering};

/// Which socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// Accepted by the HTTP/WebSocket listener (clients, carriers, webhooks, the API).
    Http,
    /// Accepted by the AudioSocket listener.
    AudioSocket,
    /// Opened to a speech-to-text provider.
    Stt,
}

impl SocketKind {
    /// Every kind, in label order.
    pub const ALL: [SocketKind; 3] = [Self::Http, Self::AudioSocket, Self::Stt];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::AudioSocket => "audiosocket",
            Self::Stt => "stt",
        }
    }
}

/// `[kind][nodelay as usize]` connection counts, process-wide (one engine per process).
static SOCKETS: [[AtomicU64; 2]; 3] = [
    [AtomicU64::new(0), AtomicU64::new(0)],
    [AtomicU64::new(0), AtomicU64::new(0)],
    [AtomicU64::new(0), AtomicU64::new(0)],
];

/// Records one socket of `kind` and whether `TCP_NODELAY` is on (read back from the socket).
pub fn observe(kind: SocketKind, nodelay: bool) {
    SOCKETS[kind as usize][usize::from(nodelay)].fetch_add(1, Ordering::Relaxed);
    if !nodelay {
        tracing::warn!(
            socket = kind.as_str(),
            "TCP_NODELAY is off on a media socket"
        );
    }
}

/// Turns `TCP_NODELAY` on for `stream`, then records what the socket reports.
pub fn tune(stream: &tokio::net::TcpStream, kind: SocketKind) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::warn!(socket = kind.as_str(), error = %err, "cannot set TCP_NODELAY");
    }
    observe(kind, stream.nodelay().unwrap_or(false));
}

/// Sockets of `kind` seen with `TCP_NODELAY` on (`true`) or off (`false`).
pub fn count(kind: SocketKind, nodelay: bool) -> u64 {
    SOCKETS[kind as usize][usize::from(nodelay)].load(Ordering::Relaxed)
}
