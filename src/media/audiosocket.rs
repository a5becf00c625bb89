//! Asterisk AudioSocket framing (PROTOCOLS.md §5). Pure: bytes in, frames out.
//!
//! Each message is `kind: u8 | length: u16 big-endian | payload[length]`. The length header is
//! the only big-endian field; audio is s16 little-endian mono.

use uuid::Uuid;

/// Largest payload accepted (100 ms of 48 kHz audio is 9,600 bytes).
pub const MAX_PAYLOAD: usize = 16 * 1024;

/// One AudioSocket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// 0x00: the call is over.
    Hangup,
    /// 0x01: the call's UUID (comes first).
    Uuid(Uuid),
    /// 0x03: one DTMF digit.
    Dtmf(char),
    /// 0x10…0x18: s16le mono at `sample_rate`.
    Audio { sample_rate: u32, pcm: Vec<u8> },
    /// 0xff: Asterisk reports an error (optional code: 1 hung up, 2 forwarding, 4 memory).
    Error(Option<u8>),
}

/// Why the byte stream is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    UnknownKind(u8),
    TooLong(usize),
    BadUuid(usize),
    BadDtmf,
    /// The stream ended inside a message.
    Truncated {
        have: usize,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownKind(k) => write!(f, "unknown AudioSocket kind 0x{k:02x}"),
            Self::TooLong(n) => write!(
                f,
                "AudioSocket payload of {n} bytes is longer than {MAX_PAYLOAD}"
            ),
            Self::BadUuid(n) => write!(f, "AudioSocket UUID payload of {n} bytes (expected 16)"),
            Self::BadDtmf => f.write_str("AudioSocket DTMF payload is not one ASCII digit"),
            Self::Truncated { have } => write!(
                f,
                "AudioSocket stream ended inside a message ({have} bytes left over)"
            ),
        }
    }
}

/// Sample rate of an audio kind.
pub fn audio_rate(kind: u8) -> Option<u32> {
    Some(match kind {
        0x10 => 8_000,
        0x11 => 12_000,
        0x12 => 16_000,
        0x13 => 24_000,
        0x14 => 32_000,
        0x15 => 44_100,
        0x16 => 48_000,
        0x17 => 96_000,
        0x18 => 192_000,
        _ => return None,
    })
}

/// Splits a TCP byte stream into frames; keeps partial messages between reads.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: Vec<u8>,
    start: usize,
}

impl Decoder {
    /// Appends bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame, `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let rest = &self.buffer[self.start..];
        if rest.len() < 3 {
            return Ok(None);
        }
        let kind = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLong(len));
        }
        if kind != 0x00
            && kind != 0x01
            && kind != 0x03
            && kind != 0xff
            && audio_rate(kind).is_none()
        {
            return Err(FrameError::UnknownKind(kind));
        }
        if rest.len() < 3 + len {
            return Ok(None);
        }
        let payload = &rest[3..3 + len];
        let frame = match kind {
            0x00 => Frame::Hangup,
            0x01 => Frame::Uuid(
                Uuid::from_slice(payload).map_err(|_| FrameError::BadUuid(payload.len()))?,
            ),
            0x03 => match payload {
                [digit] if digit.is_ascii_graphic() => Frame::Dtmf(char::from(*digit)),
                _ => return Err(FrameError::BadDtmf),
            },
            0xff => Frame::Error(payload.first().copied()),
            audio => Frame::Audio {
                sample_rate: audio_rate(audio).unwrap_or(8_000),
                pcm: payload.to_vec(),
            },
        };
        self.start += 3 + len;
        if self.start > 64 * 1024 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(frame))
    }

    /// At end of stream: an error if a message was cut off.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffer.len() - self.start {
            0 => Ok(()),
            have => Err(FrameError::Truncated { have }),
        }
    }
}

/// Encodes one message (for the hangup we send, and for test clients).
pub fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(3 + payload.len());
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload[..usize::from(len)]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut d = Decoder::default();
        d.push(bytes);
        let mut out = Vec::new();
        while let Some(f) = d.next_frame()? {
            out.push(f);
        }
        d.finish()?;
        Ok(out)
    }

    #[test]
    fn decodes_a_session() {
        let id = Uuid::new_v4();
        let mut bytes = encode(0x01, id.as_bytes());
        bytes.extend(encode(0x10, &[1u8; 320]));
        bytes.extend(encode(0x12, &[2u8; 640]));
        bytes.extend(encode(0x03, b"5"));
        bytes.extend(encode(0xff, &[0x01]));
        bytes.extend([0x00, 0x00, 0x00]);
        assert_eq!(
            frames(&bytes).unwrap(),
            vec![
                Frame::Uuid(id),
                Frame::Audio {
                    sample_rate: 8_000,
                    pcm: vec![1; 320]
                },
                Frame::Audio {
                    sample_rate: 16_000,
                    pcm: vec![2; 640]
                },
                Frame::Dtmf('5'),
                Frame::Error(Some(1)),
                Frame::Hangup,
            ]
        );
    }

    #[test]
    fn frames_split_across_reads_reassemble() {
        let bytes = encode(0x10, &[7u8; 320]);
        let mut d = Decoder::default();
        for byte in &bytes[..bytes.len() - 1] {
            d.push(std::slice::from_ref(byte));
            assert_eq!(d.next_frame(), Ok(None));
        }
        d.push(&bytes[bytes.len() - 1..]);
        assert!(matches!(d.next_frame(), Ok(Some(Frame::Audio { .. }))));
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn bad_streams_are_named() {
        assert_eq!(frames(&[0x42, 0, 0]), Err(FrameError::UnknownKind(0x42)));
        assert_eq!(
            frames(&[0x10, 0xff, 0xff]),
            Err(FrameError::TooLong(65_535))
        );
        assert_eq!(
            frames(&[0x10, 0x01]),
            Err(FrameError::Truncated { have: 2 })
        );
        assert_eq!(
            frames(&encode(0x01, &[1, 2, 3])),
            Err(FrameError::BadUuid(3))
        );
        assert_eq!(frames(&encode(0x03, b"")), Err(FrameError::BadDtmf));
        assert!(FrameError::TooLong(70_000).to_string().contains("longer"));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..20_000 {
            let len = rng.usize(..64);
            let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let mut d = Decoder::default();
            for piece in bytes.chunks(rng.usize(1..8)) {
                d.push(piece);
                while let Ok(Some(_)) = d.next_frame() {}
            }
            let _ = d.finish();
        }
    }
}
