//! Turns whatever audio a carrier sends into what the call path takes: s16le mono 16 kHz in
//! 20 ms frames (640 bytes), one stream per channel. Pure and stateful per call: G.711 decoded,
//! stereo de-interleaved, resampled with a streaming windowed-sinc filter, frames of any size
//! split on sample boundaries and re-cut to 20 ms.

use bytes::Bytes;

use crate::audio::g711;
use crate::audio::resample::StreamResampler;

/// Bytes of one 20 ms frame at 16 kHz.
pub const FRAME_16K: usize = 640;

/// How a carrier's samples are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Signed 16-bit little-endian.
    L16,
    /// G.711 μ-law, one byte per sample.
    Mulaw,
    /// G.711 A-law, one byte per sample.
    Alaw,
}

/// What a carrier announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioFormat {
    pub encoding: Encoding,
    pub sample_rate: u32,
    pub channels: u16,
}

impl AudioFormat {
    /// Bytes per sample frame (all channels).
    pub fn frame_bytes(self) -> usize {
        let per_sample = match self.encoding {
            Encoding::L16 => 2,
            Encoding::Mulaw | Encoding::Alaw => 1,
        };
        per_sample * usize::from(self.channels)
    }

    /// Milliseconds of audio in `bytes`.
    pub fn millis(self, bytes: usize) -> u64 {
        (bytes / self.frame_bytes().max(1)) as u64 * 1000 / u64::from(self.sample_rate.max(1))
    }
}

struct Channel {
    resampler: StreamResampler,
    /// 16 kHz output not yet a whole frame.
    pending: Vec<u8>,
}

/// Sample rates a transport may announce (telephony, AudioSocket's slin rates, common audio).
pub const SUPPORTED_RATES: [u32; 11] = [
    8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000, 96_000, 192_000,
];

/// One call's converter.
pub struct Normalizer {
    format: AudioFormat,
    /// Input bytes that did not make a whole sample frame yet.
    carry: Vec<u8>,
    channels: Vec<Channel>,
    samples: Vec<i16>,
    /// The resampler's output, reused from payload to payload.
    wide: Vec<i16>,
}

impl Normalizer {
    /// A converter for `format` (1 or 2 channels; rates 8–192 kHz).
    pub fn new(format: AudioFormat) -> Result<Self, String> {
        if !(1..=2).contains(&format.channels) {
            return Err(format!(
                "{} audio channels (1 or 2 supported)",
                format.channels
            ));
        }
        // A fixed set: an odd rate (191 999 Hz) would build a resampler table of millions of
        // taps for every connection that names it, before the tenant is even admitted.
        if !SUPPORTED_RATES.contains(&format.sample_rate) {
            return Err(format!(
                "sample rate {} Hz is not supported",
                format.sample_rate
            ));
        }
        let channels = (0..format.channels)
            .map(|_| Channel {
                resampler: StreamResampler::new(format.sample_rate, 16_000),
                pending: Vec::with_capacity(2 * FRAME_16K),
            })
            .collect();
        Ok(Self {
            format,
            carry: Vec::new(),
            channels,
            samples: Vec::new(),
            wide: Vec::new(),
        })
    }

    /// The announced format.
    pub fn format(&self) -> AudioFormat {
        self.format
    }

    /// Nothing held back: no partial sample frame, no partial 16 kHz frame.
    pub fn is_aligned(&self) -> bool {
        self.carry.is_empty() && self.channels.iter().all(|c| c.pending.is_empty())
    }

    /// Whether the carrier's bytes are worth keeping instead of the 16 kHz PCM for a replay:
    /// mono, smaller than the PCM, and at a rate whose 20 ms chunks map to whole 16 kHz frames.
    pub fn keeps_source(&self) -> bool {
        let f = self.format;
        f.channels == 1
            && f.sample_rate == 8_000
            && matches!(f.encoding, Encoding::Mulaw | Encoding::Alaw | Encoding::L16)
    }

    /// Feeds one payload and returns its frames; a payload that became exactly one frame with
    /// nothing held back before or after carries its own bytes as the frame's `source`.
    pub fn push_events(
        &mut self,
        payload: &Bytes,
    ) -> Vec<(usize, Bytes, Option<super::SourceAudio>)> {
        let aligned = self.is_aligned();
        let mut frames = Vec::with_capacity(2);
        self.push_bytes(payload, |channel, pcm| frames.push((channel, pcm, None)));
        if aligned && frames.len() == 1 && self.keeps_source() && self.is_aligned() {
            frames[0].2 = Some(super::SourceAudio {
                format: self.format,
                bytes: payload.clone(),
            });
        }
        frames
    }

    /// Feeds one payload held in `Bytes`: like [`Normalizer::push`], but audio that already is
    /// 16 kHz mono L16 in whole frames (Vonage 16 kHz, audio_fork 16 kHz, AudioSocket 0x12) is
    /// handed on as zero-copy slices of the payload — no decode, no resampling, no copy.
    pub fn push_bytes(&mut self, payload: &Bytes, mut emit: impl FnMut(usize, Bytes)) {
        let passthrough = self.format.encoding == Encoding::L16
            && self.format.sample_rate == 16_000
            && self.channels.len() == 1
            && self.carry.is_empty()
            && self.channels[0].pending.is_empty();
        if passthrough && payload.len().is_multiple_of(FRAME_16K) {
            for k in 0..payload.len() / FRAME_16K {
                emit(0, payload.slice(k * FRAME_16K..(k + 1) * FRAME_16K));
            }
            return;
        }
        self.push(payload, emit);
    }

    /// Feeds one payload; calls `emit(channel, frame)` for every complete 640-byte frame.
    pub fn push(&mut self, payload: &[u8], mut emit: impl FnMut(usize, Bytes)) {
        let unit = self.format.frame_bytes();
        let joined;
        let data: &[u8] = if self.carry.is_empty() {
            payload
        } else {
            self.carry.extend_from_slice(payload);
            joined = std::mem::take(&mut self.carry);
            &joined
        };
        let whole = data.len() / unit * unit;
        let (body, rest) = data.split_at(whole);
        let n_channels = self.channels.len();
        for (index, channel) in self.channels.iter_mut().enumerate() {
            self.samples.clear();
            match self.format.encoding {
                Encoding::L16 => self.samples.extend(
                    body.chunks_exact(unit)
                        .map(|f| i16::from_le_bytes([f[2 * index], f[2 * index + 1]])),
                ),
                Encoding::Mulaw if n_channels == 1 => g711::decode_ulaw(body, &mut self.samples),
                Encoding::Alaw if n_channels == 1 => g711::decode_alaw(body, &mut self.samples),
                Encoding::Mulaw => self.samples.extend(
                    body.chunks_exact(unit)
                        .map(|f| g711::ULAW[f[index] as usize]),
                ),
                Encoding::Alaw => self.samples.extend(
                    body.chunks_exact(unit)
                        .map(|f| g711::ALAW[f[index] as usize]),
                ),
            }
            self.wide.clear();
            channel
                .resampler
                .process_into(&self.samples, &mut self.wide);
            channel
                .pending
                .extend(self.wide.iter().flat_map(|s| s.to_le_bytes()));
            let frames = channel.pending.len() / FRAME_16K;
            if frames > 0 {
                let cut = frames * FRAME_16K;
                let out = Bytes::copy_from_slice(&channel.pending[..cut]);
                channel.pending.drain(..cut);
                for k in 0..frames {
                    emit(index, out.slice(k * FRAME_16K..(k + 1) * FRAME_16K));
                }
            }
        }
        self.carry = rest.to_vec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(n: &mut Normalizer, payload: &[u8]) -> Vec<(usize, Bytes)> {
        let mut out = Vec::new();
        n.push(payload, |c, f| out.push((c, f)));
        out
    }

    #[test]
    fn wideband_mono_frames_are_passed_on_without_a_copy() {
        let mut n = Normalizer::new(AudioFormat {
            encoding: Encoding::L16,
            sample_rate: 16_000,
            channels: 1,
        })
        .unwrap();
        let payload = Bytes::from((0..1280u32).map(|i| i as u8).collect::<Vec<u8>>());
        let mut out = Vec::new();
        n.push_bytes(&payload, |c, f| out.push((c, f)));
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].1, payload.slice(640..));
        // The same memory, not a copy.
        assert_eq!(out[0].1.as_ptr(), payload.as_ptr());
        // A partial frame falls back to the general path, which carries the remainder.
        let mut out = Vec::new();
        n.push_bytes(&payload.slice(..700), |c, f| out.push((c, f)));
        n.push_bytes(&payload.slice(700..1280), |c, f| out.push((c, f)));
        let joined: Vec<u8> = out.iter().flat_map(|(_, f)| f.to_vec()).collect();
        assert_eq!(joined, payload.to_vec());
    }

    #[test]
    fn wideband_mono_passes_through_in_20ms_frames() {
        let format = AudioFormat {
            encoding: Encoding::L16,
            sample_rate: 16_000,
            channels: 1,
        };
        let mut n = Normalizer::new(format).unwrap();
        let payload: Vec<u8> = (0..1_000u16).flat_map(|v| v.to_le_bytes()).collect();
        // 2,000 bytes: three frames out, 80 bytes pending; odd byte splits carried over.
        let out = collect(&mut n, &payload[..1_001]);
        assert_eq!(out.len(), 1);
        let out = collect(&mut n, &payload[1_001..]);
        assert_eq!(out.len(), 2);
        let joined: Vec<u8> = out.iter().flat_map(|(_, f)| f.to_vec()).collect();
        assert_eq!(&joined[..], &payload[640..1_920]);
    }

    #[test]
    fn a_whole_narrowband_packet_keeps_its_own_bytes_for_replays() {
        let format = AudioFormat {
            encoding: Encoding::Mulaw,
            sample_rate: 8_000,
            channels: 1,
        };
        let mut n = Normalizer::new(format).unwrap();
        let packet = Bytes::from(vec![0x80u8; 160]);
        let frames = n.push_events(&packet);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].2.as_ref().map(|s| s.bytes.clone()), Some(packet));
        // A packet that is not a whole frame keeps nothing (its audio spans two frames).
        let odd = n.push_events(&Bytes::from(vec![0x80u8; 100]));
        assert!(odd.iter().all(|f| f.2.is_none()));
        // Wideband PCM is not smaller than itself: nothing kept.
        let wide = AudioFormat {
            encoding: Encoding::L16,
            sample_rate: 16_000,
            channels: 1,
        };
        let mut n = Normalizer::new(wide).unwrap();
        let frames = n.push_events(&Bytes::from(vec![0u8; 640]));
        assert!(frames[0].2.is_none());
    }

    #[test]
    fn narrowband_mulaw_doubles_in_length() {
        let format = AudioFormat {
            encoding: Encoding::Mulaw,
            sample_rate: 8_000,
            channels: 1,
        };
        let mut n = Normalizer::new(format).unwrap();
        // Every 20 ms μ-law chunk is one 20 ms frame out at once, from the first: no frame
        // waits for the next chunk (the resampler is primed).
        for k in 0..50 {
            assert_eq!(collect(&mut n, &[0x80; 160]).len(), 1, "chunk {k}");
        }
    }

    #[test]
    fn stereo_is_split_into_two_channels() {
        let format = AudioFormat {
            encoding: Encoding::L16,
            sample_rate: 16_000,
            channels: 2,
        };
        let mut n = Normalizer::new(format).unwrap();
        let mut payload = Vec::new();
        for _ in 0..320 {
            payload.extend_from_slice(&100i16.to_le_bytes());
            payload.extend_from_slice(&(-200i16).to_le_bytes());
        }
        let out = collect(&mut n, &payload);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, 0);
        assert_eq!(i16::from_le_bytes([out[0].1[0], out[0].1[1]]), 100);
        assert_eq!(out[1].0, 1);
        assert_eq!(i16::from_le_bytes([out[1].1[0], out[1].1[1]]), -200);
    }

    #[test]
    fn unsupported_formats_are_refused() {
        let bad = |channels, sample_rate| {
            Normalizer::new(AudioFormat {
                encoding: Encoding::L16,
                sample_rate,
                channels,
            })
            .is_err()
        };
        assert!(bad(3, 8_000));
        assert!(bad(1, 4_000));
        assert!(!bad(2, 48_000));
    }
}
