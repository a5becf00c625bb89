//! PCM frame validation: what may reach speech-to-text.
//!
//! The generic voice endpoint takes PCM s16le, mono, 16 kHz, in 20 ms frames (640 bytes); whole
//! multiples of 20 ms up to 100 ms are accepted too. Everything else is rejected with a reason,
//! counted and skipped by the call, never forwarded.

use std::fmt;

/// Shape of the PCM a call carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcmFormat {
    /// Samples per second.
    pub sample_rate: u32,
    /// Longest accepted message, in milliseconds (a multiple of 20).
    pub max_frame_ms: u32,
}

impl PcmFormat {
    /// 16 kHz mono, up to 100 ms per message.
    pub const WIDEBAND: PcmFormat = PcmFormat {
        sample_rate: 16_000,
        max_frame_ms: 100,
    };

    /// Bytes in one 20 ms frame of s16 mono.
    pub const fn bytes_per_20ms(self) -> usize {
        (self.sample_rate as usize / 50) * 2
    }

    /// Milliseconds of audio in `bytes` of s16 mono (whole samples only).
    pub const fn millis(self, bytes: usize) -> u64 {
        (bytes as u64 / 2) * 1000 / self.sample_rate as u64
    }
}

/// Why a frame was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidFrame {
    /// A zero-length binary message.
    Empty,
    /// An odd number of bytes cannot be s16 samples.
    OddLength(usize),
    /// Not a whole number of 20 ms frames.
    NotWholeFrames(usize),
    /// Longer than the format allows.
    TooLong(usize),
}

impl fmt::Display for InvalidFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty frame"),
            Self::OddLength(n) => write!(f, "{n} bytes is odd: not s16 samples"),
            Self::NotWholeFrames(n) => write!(f, "{n} bytes is not a whole number of 20 ms frames"),
            Self::TooLong(n) => write!(f, "{n} bytes is longer than the largest accepted frame"),
        }
    }
}

/// Checks one binary message against the call's format; returns its duration in milliseconds.
///
/// Runs once per audio frame on every call: integer checks only, no allocation.
#[inline]
pub fn validate_frame(format: PcmFormat, frame: &[u8]) -> Result<u32, InvalidFrame> {
    let len = frame.len();
    let unit = format.bytes_per_20ms();
    if len == 0 {
        return Err(InvalidFrame::Empty);
    }
    if !len.is_multiple_of(2) {
        return Err(InvalidFrame::OddLength(len));
    }
    if len > unit * (format.max_frame_ms as usize / 20) {
        return Err(InvalidFrame::TooLong(len));
    }
    if !len.is_multiple_of(unit) {
        return Err(InvalidFrame::NotWholeFrames(len));
    }
    Ok((len / unit) as u32 * 20)
}

/// Root-mean-square level of s16le samples (0 for an empty slice).
pub fn rms_s16le(frame: &[u8]) -> f64 {
    let samples = frame.len() / 2;
    if samples == 0 {
        return 0.0;
    }
    let sum: f64 = frame
        .chunks_exact(2)
        .map(|pair| f64::from(i16::from_le_bytes([pair[0], pair[1]])).powi(2))
        .sum();
    (sum / samples as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: PcmFormat = PcmFormat::WIDEBAND;

    #[test]
    fn accepts_whole_20ms_frames_up_to_100ms() {
        for frames in 1..=5 {
            assert_eq!(
                validate_frame(F, &vec![0; 640 * frames]),
                Ok(20 * frames as u32)
            );
        }
    }

    #[test]
    fn rejects_each_malformed_shape_with_its_reason() {
        assert_eq!(validate_frame(F, &[]), Err(InvalidFrame::Empty));
        assert_eq!(
            validate_frame(F, &[0; 641]),
            Err(InvalidFrame::OddLength(641))
        );
        assert_eq!(
            validate_frame(F, &[0; 320]),
            Err(InvalidFrame::NotWholeFrames(320))
        );
        assert_eq!(
            validate_frame(F, &[0; 1000]),
            Err(InvalidFrame::NotWholeFrames(1000))
        );
        assert_eq!(
            validate_frame(F, &[0; 3840]),
            Err(InvalidFrame::TooLong(3840))
        );
        assert!(InvalidFrame::OddLength(641).to_string().contains("641"));
    }

    #[test]
    fn narrowband_format_uses_320_byte_frames() {
        let narrow = PcmFormat {
            sample_rate: 8_000,
            max_frame_ms: 20,
        };
        assert_eq!(validate_frame(narrow, &[0; 320]), Ok(20));
        assert_eq!(
            validate_frame(narrow, &[0; 640]),
            Err(InvalidFrame::TooLong(640))
        );
        assert_eq!(narrow.millis(320), 20);
    }

    #[test]
    fn rms_of_silence_is_zero_and_of_full_scale_square_is_large() {
        assert_eq!(rms_s16le(&[0; 640]), 0.0);
        let loud: Vec<u8> = (0..320)
            .flat_map(|i| if i % 2 == 0 { 10_000i16 } else { -10_000 }.to_le_bytes())
            .collect();
        assert!((rms_s16le(&loud) - 10_000.0).abs() < 1e-6);
    }
}
