//! What the simulated calls speak: the protocols ([`LoadProtocol`]), the 20 ms frame, and the
//! run's audio encoded once in each protocol's own form ([`Frames`]).

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use uuid::Uuid;

use crate::audio::g711::linear_to_ulaw;
use crate::media::audiosocket;

/// 20 ms of s16le mono at 16 kHz.
pub const FRAME_BYTES: usize = 640;
/// Frame length.
pub const FRAME_MS: u64 = 20;

/// Which protocol the simulated calls speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadProtocol {
    /// Generic `/ws/voice/{uuid}` (the engine's JSON events on the same socket).
    Voice,
    /// Vonage Voice API WebSocket, L16 16 kHz.
    Vonage,
    /// Twilio Media Streams, μ-law 8 kHz.
    Twilio,
    /// FreeSWITCH mod_audio_fork / jambonz listen, L16 16 kHz mono.
    Audiofork,
    /// Asterisk AudioSocket over TCP, slin 16 kHz.
    Audiosocket,
}

impl LoadProtocol {
    /// The engine's name for it (`calls.protocol`).
    pub fn engine_name(self) -> &'static str {
        match self {
            Self::Voice => "voice",
            Self::Vonage => "vonage",
            Self::Twilio => "twilio",
            Self::Audiofork => "audiofork",
            Self::Audiosocket => "audiosocket",
        }
    }

    /// Whether the engine answers on the call's own connection (only the generic socket;
    /// carriers get nothing back, so their finals come from the `/api/v1/events` feed).
    pub fn events_on_socket(self) -> bool {
        self == Self::Voice
    }

    /// A fresh transport-level call id, shaped as that carrier's own.
    pub fn new_external_id(self) -> String {
        let id = Uuid::new_v4();
        match self {
            Self::Twilio => format!("CA{}", id.simple()),
            _ => id.to_string(),
        }
    }
}

/// The run's audio, encoded once in the protocol's own form: frame `k` of the clip, and
/// silence.
pub enum Frames {
    /// L16 16 kHz slices (voice, Vonage, audio_fork).
    Pcm { clip: Bytes, silence: Bytes },
    /// Base64 μ-law 8 kHz payloads (Twilio).
    Base64 { clip: Vec<String>, silence: String },
    /// Whole AudioSocket 0x12 messages (header + 640 bytes).
    Socket { clip: Vec<Bytes>, silence: Bytes },
}

impl Frames {
    /// Encodes `pcm` (s16le 16 kHz mono, whole frames) for `protocol`.
    pub fn encode(protocol: LoadProtocol, pcm: &Bytes) -> Self {
        let silence_pcm = Bytes::from(vec![0u8; FRAME_BYTES]);
        match protocol {
            LoadProtocol::Voice | LoadProtocol::Vonage | LoadProtocol::Audiofork => Self::Pcm {
                clip: pcm.clone(),
                silence: silence_pcm,
            },
            LoadProtocol::Twilio => {
                let samples: Vec<f32> = pcm
                    .chunks_exact(2)
                    .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0)
                    .collect();
                let narrow = crate::audio::resample::resample(&samples, 16_000, 8_000);
                let ulaw: Vec<u8> = narrow
                    .iter()
                    .map(|s| linear_to_ulaw((s.clamp(-1.0, 1.0) * 32_767.0) as i16))
                    .collect();
                let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
                let frames = pcm.len() / FRAME_BYTES;
                let clip = (0..frames)
                    .map(|k| {
                        let at = (k * 160).min(ulaw.len());
                        let mut frame = ulaw[at..(at + 160).min(ulaw.len())].to_vec();
                        frame.resize(160, linear_to_ulaw(0));
                        b64(&frame)
                    })
                    .collect();
                Self::Base64 {
                    clip,
                    silence: b64(&[linear_to_ulaw(0); 160]),
                }
            }
            LoadProtocol::Audiosocket => Self::Socket {
                clip: pcm
                    .chunks_exact(FRAME_BYTES)
                    .map(|f| Bytes::from(audiosocket::encode(0x12, f)))
                    .collect(),
                silence: Bytes::from(audiosocket::encode(0x12, &silence_pcm)),
            },
        }
    }

    /// Frames in the clip.
    pub fn clip_frames(&self) -> u64 {
        match self {
            Self::Pcm { clip, .. } => (clip.len() / FRAME_BYTES) as u64,
            Self::Base64 { clip, .. } => clip.len() as u64,
            Self::Socket { clip, .. } => clip.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_is_encoded_once_per_protocol() {
        let pcm = Bytes::from(vec![0u8; FRAME_BYTES * 3]);
        let twilio = Frames::encode(LoadProtocol::Twilio, &pcm);
        assert_eq!(twilio.clip_frames(), 3);
        if let Frames::Base64 { clip, silence } = &twilio {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(&clip[0])
                .unwrap_or_default();
            assert_eq!(raw.len(), 160, "20 ms of μ-law at 8 kHz");
            assert_eq!(&clip[0], silence);
        }
        let socket = Frames::encode(LoadProtocol::Audiosocket, &pcm);
        assert_eq!(socket.clip_frames(), 3);
        if let Frames::Socket { clip, .. } = &socket {
            assert_eq!(&clip[0][..3], &[0x12, 0x02, 0x80]);
            assert_eq!(clip[0].len(), 3 + FRAME_BYTES);
        }
        assert_eq!(Frames::encode(LoadProtocol::Vonage, &pcm).clip_frames(), 3);
    }

    #[test]
    fn external_ids_look_like_the_carriers() {
        assert!(LoadProtocol::Twilio.new_external_id().starts_with("CA"));
        assert_eq!(LoadProtocol::Twilio.new_external_id().len(), 34);
        assert!(Uuid::parse_str(&LoadProtocol::Audiosocket.new_external_id()).is_ok());
    }
}
