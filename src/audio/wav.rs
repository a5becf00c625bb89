//! Minimal WAV reading: PCM s16 (any rate, any channel count) → 16 kHz mono f32.

/// Why a WAV file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    #[error("not a RIFF/WAVE file")]
    NotWav,
    #[error("unsupported WAV format: {0}")]
    Unsupported(String),
    #[error("the WAV file has no data")]
    NoData,
}

/// Decoded audio.
#[derive(Debug, Clone, PartialEq)]
pub struct Wav {
    pub sample_rate: u32,
    pub channels: u16,
    /// Interleaved samples.
    pub samples: Vec<i16>,
}

/// Parses a PCM s16 WAV file.
pub fn parse(bytes: &[u8]) -> Result<Wav, WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWav);
    }
    let (mut pos, mut format) = (12, None);
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let declared = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        let body = pos + 8;
        let len = declared.min(bytes.len() - body);
        if id == b"fmt " && len >= 16 {
            let f = &bytes[body..body + 16];
            let (tag, channels) = (
                u16::from_le_bytes([f[0], f[1]]),
                u16::from_le_bytes([f[2], f[3]]),
            );
            let rate = u32::from_le_bytes([f[4], f[5], f[6], f[7]]);
            let bits = u16::from_le_bytes([f[14], f[15]]);
            if !(tag == 1 || tag == 0xFFFE) || bits != 16 || channels == 0 || rate == 0 {
                return Err(WavError::Unsupported(format!(
                    "format {tag}, {bits} bits, {channels} channels, {rate} Hz"
                )));
            }
            format = Some((rate, channels));
        } else if id == b"data" {
            let (sample_rate, channels) =
                format.ok_or(WavError::Unsupported("data before fmt".into()))?;
            let samples: Vec<i16> = bytes[body..body + len]
                .chunks_exact(2)
                .map(|p| i16::from_le_bytes([p[0], p[1]]))
                .collect();
            if samples.is_empty() {
                return Err(WavError::NoData);
            }
            return Ok(Wav {
                sample_rate,
                channels,
                samples,
            });
        }
        pos = body + len + (len & 1);
    }
    Err(WavError::NoData)
}

impl Wav {
    /// Mono 16 kHz samples in `[-1, 1]` (channels averaged, band-limited resampling).
    pub fn to_mono_16k(&self) -> Vec<f32> {
        let ch = self.channels as usize;
        let mono: Vec<f32> = self
            .samples
            .chunks_exact(ch)
            .map(|frame| frame.iter().map(|s| f32::from(*s)).sum::<f32>() / (ch as f32 * 32_768.0))
            .collect();
        crate::audio::resample::resample(&mono, self.sample_rate, 16_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(rate: u32, channels: u16, samples: &[i16]) -> Vec<u8> {
        let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut b = b"RIFF".to_vec();
        b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&channels.to_le_bytes());
        b.extend_from_slice(&rate.to_le_bytes());
        b.extend_from_slice(&(rate * 2 * u32::from(channels)).to_le_bytes());
        b.extend_from_slice(&(2 * channels).to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend(data);
        b
    }

    #[test]
    fn reads_stereo_and_downmixes_and_resamples() {
        let parsed = parse(&wav(8_000, 2, &[16_384, 0, 16_384, 0])).unwrap();
        assert_eq!(
            (parsed.sample_rate, parsed.channels, parsed.samples.len()),
            (8_000, 2, 4)
        );
        let mono = parsed.to_mono_16k();
        assert_eq!(mono.len(), 4, "8 kHz to 16 kHz doubles the two frames");
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert_eq!(parse(b"not a wav"), Err(WavError::NotWav));
        let mut eight_bit = wav(8_000, 1, &[1]);
        eight_bit[34] = 8;
        assert!(matches!(parse(&eight_bit), Err(WavError::Unsupported(_))));
        assert_eq!(parse(&wav(8_000, 1, &[])), Err(WavError::NoData));
    }
}
