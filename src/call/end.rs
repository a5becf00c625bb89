//! Why a call ended, and what follows from it: the stored status and end reason, and the
//! WebSocket close code (RELIABILITY.md: 1000 normal, 1001 going away, 1011 internal error…).

use crate::store::CallStatus;

/// Every way a call can end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The client sent a Close frame.
    ClientClosed,
    /// The client sent a `stop` control message.
    ClientStop,
    /// The connection ended without a Close frame (TCP reset, network loss).
    ConnectionLost,
    /// No audio for the configured idle time.
    IdleTimeout,
    /// STT failed past its restart budget, or refused the stream.
    SttFailed(String),
    /// An operator hung up through the API.
    OperatorHangup,
    /// The process is shutting down (SIGTERM/SIGINT).
    Shutdown,
    /// The client broke the WebSocket protocol (e.g. an oversized message).
    ProtocolError {
        message_too_big: bool,
        detail: String,
    },
}

impl EndReason {
    /// Status stored on the call row.
    pub fn status(&self) -> CallStatus {
        match self {
            Self::SttFailed(_) => CallStatus::Failed,
            _ => CallStatus::Completed,
        }
    }

    /// `end_reason` stored on the call row.
    pub fn code_name(&self) -> &'static str {
        match self {
            Self::ClientClosed => "caller_hangup",
            Self::ClientStop => "caller_stop",
            Self::ConnectionLost => "connection_lost",
            Self::IdleTimeout => "idle_timeout",
            Self::SttFailed(_) => "stt_failed",
            Self::OperatorHangup => "operator_hangup",
            Self::Shutdown => "shutdown",
            Self::ProtocolError { .. } => "protocol_error",
        }
    }

    /// The WebSocket close code and description for this end.
    pub fn close(&self) -> (u16, String) {
        match self {
            Self::Shutdown => (1001, "server shutting down".into()),
            Self::SttFailed(reason) => (1011, format!("speech-to-text failed: {reason}")),
            Self::ProtocolError {
                message_too_big: true,
                ..
            } => (1009, "message too big".into()),
            Self::ProtocolError { detail, .. } => (1002, format!("protocol error: {detail}")),
            other => (1000, other.code_name().into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_end_maps_to_status_reason_and_close_code() {
        let cases = [
            (
                EndReason::ClientClosed,
                CallStatus::Completed,
                "caller_hangup",
                1000,
            ),
            (
                EndReason::IdleTimeout,
                CallStatus::Completed,
                "idle_timeout",
                1000,
            ),
            (
                EndReason::OperatorHangup,
                CallStatus::Completed,
                "operator_hangup",
                1000,
            ),
            (EndReason::Shutdown, CallStatus::Completed, "shutdown", 1001),
            (
                EndReason::SttFailed("x".into()),
                CallStatus::Failed,
                "stt_failed",
                1011,
            ),
            (
                EndReason::ProtocolError {
                    message_too_big: true,
                    detail: String::new(),
                },
                CallStatus::Completed,
                "protocol_error",
                1009,
            ),
        ];
        for (reason, status, name, code) in cases {
            assert_eq!(
                (reason.status(), reason.code_name(), reason.close().0),
                (status, name, code)
            );
        }
    }
}
