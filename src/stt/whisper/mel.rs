//! Whisper's log-mel front end: 16 kHz audio padded to 30 s, a centred STFT (reflect padding,
//! periodic Hann window, n_fft 400, hop 160), power spectrum, 80 Slaney mel filters, log10,
//! floor at max − 8, then `(x + 4) / 4`. Matches OpenAI's `log_mel_spectrogram`.

use std::sync::Arc;

use realfft::RealFftPlanner;

/// Samples per second.
pub const SAMPLE_RATE: usize = 16_000;
/// FFT size.
pub const N_FFT: usize = 400;
/// Hop between frames.
pub const HOP: usize = 160;
/// Mel bands.
pub const N_MELS: usize = 80;
/// Frames in the encoder's 30 s window.
pub const N_FRAMES: usize = 3_000;
/// Samples in 30 s.
pub const N_SAMPLES: usize = SAMPLE_RATE * 30;
const N_BINS: usize = N_FFT / 2 + 1;
/// Frequency bins per frame.
pub const N_BINS_PUBLIC: usize = N_BINS;

/// Precomputed window, filters and FFT plan.
pub struct MelFrontEnd {
    window: Vec<f32>,
    /// `N_MELS × N_BINS`, row-major.
    filters: Vec<f32>,
    fft: Arc<dyn realfft::RealToComplex<f32>>,
}

impl Default for MelFrontEnd {
    fn default() -> Self {
        Self::new()
    }
}

impl MelFrontEnd {
    /// Builds the window, the filter bank and the FFT plan.
    pub fn new() -> Self {
        let window = (0..N_FFT)
            .map(|n| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()) as f32
            })
            .collect();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        Self {
            window,
            filters: mel_filters(),
            fft,
        }
    }

    /// The filter bank, `N_MELS × (N_FFT/2 + 1)` row-major.
    pub fn filters(&self) -> &[f32] {
        &self.filters
    }

    /// Power spectrogram of the first 30 s (padded with silence), `N_BINS × N_FRAMES`
    /// row-major (frequency-major, ready to multiply by the filters).
    pub fn power_spectrogram(&self, samples: &[f32]) -> Vec<f32> {
        let mut audio = samples[..samples.len().min(N_SAMPLES)].to_vec();
        audio.resize(N_SAMPLES, 0.0);
        let padded = reflect_pad(&audio, N_FFT / 2);
        let mut out = vec![0f32; N_BINS * N_FRAMES];
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        for frame in 0..N_FRAMES {
            let start = frame * HOP;
            for (i, slot) in input.iter_mut().enumerate() {
                *slot = padded[start + i] * self.window[i];
            }
            if self
                .fft
                .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                .is_err()
            {
                continue;
            }
            for (bin, c) in spectrum.iter().enumerate() {
                out[bin * N_FRAMES + frame] = c.re * c.re + c.im * c.im;
            }
        }
        out
    }
}

/// Reflect padding without repeating the edge sample (numpy/torch `reflect`).
fn reflect_pad(x: &[f32], pad: usize) -> Vec<f32> {
    let n = x.len();
    let mut out = Vec::with_capacity(n + 2 * pad);
    out.extend((1..=pad).rev().map(|i| x[i.min(n - 1)]));
    out.extend_from_slice(x);
    out.extend((1..=pad).map(|i| x[n.saturating_sub(1 + i)]));
    out
}

/// Slaney-scale mel frequency of `hz` (librosa's default, `htk=False`).
fn hz_to_mel(hz: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let (min_log_hz, logstep) = (1_000.0, (6.4f64).ln() / 27.0);
    if hz >= min_log_hz {
        min_log_hz / f_sp + (hz / min_log_hz).ln() / logstep
    } else {
        hz / f_sp
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let (min_log_hz, logstep) = (1_000.0, (6.4f64).ln() / 27.0);
    let min_log_mel = min_log_hz / f_sp;
    if mel >= min_log_mel {
        min_log_hz * (logstep * (mel - min_log_mel)).exp()
    } else {
        mel * f_sp
    }
}

/// librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) with Slaney normalisation.
pub fn mel_filters() -> Vec<f32> {
    let fft_freqs: Vec<f64> = (0..N_BINS)
        .map(|i| i as f64 * SAMPLE_RATE as f64 / N_FFT as f64)
        .collect();
    let (min_mel, max_mel) = (hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE as f64 / 2.0));
    let mel_f: Vec<f64> = (0..N_MELS + 2)
        .map(|i| mel_to_hz(min_mel + (max_mel - min_mel) * i as f64 / (N_MELS + 1) as f64))
        .collect();
    let mut weights = vec![0f32; N_MELS * N_BINS];
    for m in 0..N_MELS {
        let (lower_edge, center, upper_edge) = (mel_f[m], mel_f[m + 1], mel_f[m + 2]);
        let enorm = 2.0 / (upper_edge - lower_edge);
        for (bin, f) in fft_freqs.iter().enumerate() {
            let lower = (f - lower_edge) / (center - lower_edge);
            let upper = (upper_edge - f) / (upper_edge - center);
            weights[m * N_BINS + bin] = (lower.min(upper).max(0.0) * enorm) as f32;
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_padding_mirrors_without_the_edge() {
        assert_eq!(
            reflect_pad(&[1.0, 2.0, 3.0, 4.0], 2),
            vec![3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0]
        );
    }

    #[test]
    fn filters_are_triangles_with_slaney_area_normalisation() {
        let f = mel_filters();
        assert_eq!(f.len(), N_MELS * N_BINS);
        // Reference: OpenAI whisper's assets/mel_filters.npz (`mel_80`), read with numpy.
        for (index, expected) in [
            (1, 0.024_862_595),
            (N_BINS + 1, 0.001_990_822),
            (N_BINS + 2, 0.022_871_772),
        ] {
            assert!(
                (f[index] - expected).abs() < 1e-6,
                "filter[{index}] = {} vs {expected}",
                f[index]
            );
        }
        let sum: f32 = f.iter().sum();
        assert!((sum - 1.999_024_2).abs() < 1e-4, "sum {sum}");
        assert!(f.iter().all(|w| *w >= 0.0));
        for m in 0..N_MELS {
            assert!(
                f[m * N_BINS..(m + 1) * N_BINS].iter().any(|w| *w > 0.0),
                "band {m} is empty"
            );
        }
    }

    #[test]
    fn a_pure_tone_peaks_in_its_frequency_bin() {
        let front = MelFrontEnd::new();
        let tone: Vec<f32> = (0..SAMPLE_RATE)
            .map(|i| (2.0 * std::f32::consts::PI * 1_000.0 * i as f32 / 16_000.0).sin())
            .collect();
        let power = front.power_spectrogram(&tone);
        let frame = 50;
        let peak = (0..N_BINS)
            .max_by(|a, b| power[a * N_FRAMES + frame].total_cmp(&power[b * N_FRAMES + frame]))
            .unwrap();
        assert_eq!(peak, 25, "1 kHz is bin 25 at 40 Hz per bin");
        assert_eq!(power[25 * N_FRAMES + 2_900], 0.0, "silence after the tone");
    }
}
