//! Recording decoding: WAV (PCM, μ-law, A-law) and MP3 through symphonia, mixed to mono and
//! resampled to 16 kHz with the engine's windowed-sinc resampler. No ffmpeg.

use std::io::Cursor;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::DecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// Longest recording [`decode_to_16k_mono`] decodes: four hours.
pub const DEFAULT_MAX_SECS: u64 = 4 * 3600;

/// Decodes a recording to 16 kHz mono samples in `[-1, 1]`, at most [`DEFAULT_MAX_SECS`].
pub fn decode_to_16k_mono(bytes: &[u8], hint_extension: Option<&str>) -> Result<Vec<f32>, String> {
    decode_to_16k_mono_capped(bytes, hint_extension, DEFAULT_MAX_SECS)
}

/// Decodes a recording to 16 kHz mono samples in `[-1, 1]`. A recording longer than
/// `max_secs` is refused as soon as that much is decoded (or at once when its header says so):
/// a few megabytes of low-bit-rate MP3 must not become gigabytes of samples. The error says
/// what is wrong.
pub fn decode_to_16k_mono_capped(
    bytes: &[u8],
    hint_extension: Option<&str>,
    max_secs: u64,
) -> Result<Vec<f32>, String> {
    if bytes.is_empty() {
        return Err("the recording is empty".into());
    }
    let stream = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = hint_extension {
        hint.with_extension(ext);
    }
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            stream,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| format!("not a recording this engine can decode: {e}"))?;
    let mut format = probed.format;
    let track = format
        .default_track()
        .ok_or("the recording has no audio track")?;
    let track_id = track.id;
    let rate = track
        .codec_params
        .sample_rate
        .ok_or("the recording does not say its sample rate")?;
    // A header may claim any rate: 1 Hz would resample a few kB into millions of samples.
    if !(8_000..=192_000).contains(&rate) {
        return Err(format!(
            "the recording's sample rate {rate} Hz is not supported (8 to 192 kHz)"
        ));
    }
    let max_frames = max_secs.saturating_mul(u64::from(rate));
    let too_long = || format!("the recording is longer than the {max_secs} s decoded at most");
    if track.codec_params.n_frames.is_some_and(|n| n > max_frames) {
        return Err(too_long());
    }
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| format!("unsupported codec: {e}"))?;
    let mut mono: Vec<f32> = Vec::new();
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break
            }
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => return Err(format!("corrupt recording: {e}")),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // A damaged packet is skipped, as players do.
            Err(SymphoniaError::DecodeError(_)) => continue,
            Err(e) => return Err(format!("corrupt recording: {e}")),
        };
        let spec = *decoded.spec();
        let channels = spec.channels.count().max(1);
        let mut buffer = SampleBuffer::<f32>::new(decoded.capacity() as u64, spec);
        buffer.copy_interleaved_ref(decoded);
        for frame in buffer.samples().chunks(channels) {
            mono.push(frame.iter().sum::<f32>() / channels as f32);
        }
        if mono.len() as u64 > max_frames {
            return Err(too_long());
        }
    }
    if mono.is_empty() {
        return Err("the recording holds no audio".into());
    }
    Ok(crate::audio::resample::resample(&mono, rate, 16_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAV file as recorders write it: non-PCM formats (μ-law) carry an 18-byte `fmt `
    /// chunk with `cbSize = 0`.
    fn wav(format: u16, bits: u16, rate: u32, data: &[u8]) -> Vec<u8> {
        let extended = format != 1;
        let fmt_len: u32 = if extended { 18 } else { 16 };
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(20 + fmt_len + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&fmt_len.to_le_bytes());
        out.extend_from_slice(&format.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * u32::from(bits) / 8).to_le_bytes());
        out.extend_from_slice(&(bits / 8).to_le_bytes());
        out.extend_from_slice(&bits.to_le_bytes());
        if extended {
            out.extend_from_slice(&0u16.to_le_bytes());
        }
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn pcm_and_mulaw_wav_decode_to_16k() {
        let pcm: Vec<u8> = (0..8_000)
            .map(|i| ((i as f32 * 0.1).sin() * 8_000.0) as i16)
            .flat_map(i16::to_le_bytes)
            .collect();
        let out = decode_to_16k_mono(&wav(1, 16, 8_000, &pcm), Some("wav")).unwrap();
        assert!((15_990..=16_000).contains(&out.len()), "{}", out.len());
        let ulaw = vec![0x80u8; 8_000];
        let out = decode_to_16k_mono(&wav(7, 8, 8_000, &ulaw), Some("wav")).unwrap();
        assert!((15_990..=16_000).contains(&out.len()), "{}", out.len());
    }

    #[test]
    fn recordings_past_the_cap_are_refused() {
        let pcm = vec![0u8; 8_000 * 2 * 3]; // 3 s at 8 kHz
        let file = wav(1, 16, 8_000, &pcm);
        assert!(decode_to_16k_mono_capped(&file, Some("wav"), 3).is_ok());
        let err = decode_to_16k_mono_capped(&file, Some("wav"), 2).unwrap_err();
        assert!(err.contains("longer than"), "{err}");
    }

    #[test]
    fn empty_and_garbage_are_named() {
        assert!(decode_to_16k_mono(&[], None).unwrap_err().contains("empty"));
        let err = decode_to_16k_mono(b"definitely not audio at all, just text", None).unwrap_err();
        assert!(err.contains("decode"), "{err}");
    }
}
