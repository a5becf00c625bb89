//! Band-limited resampling: windowed-sinc interpolation with a low-pass at the lower Nyquist
//! frequency (Hann window, 16 zero crossings each side). Linear interpolation aliases badly when
//! downsampling speech (22.05 kHz → 16 kHz cost tiny.en whole words); this does not.

use std::f64::consts::PI;

/// Zero crossings of the sinc kept on each side.
const ZERO_CROSSINGS: f64 = 16.0;

/// Resamples `input` from `from` Hz to `to` Hz.
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() || from == 0 || to == 0 {
        return input.to_vec();
    }
    let ratio = f64::from(to) / f64::from(from);
    // Cut-off relative to the input's Nyquist frequency, a little below the lower Nyquist.
    let cutoff = ratio.min(1.0) * 0.97;
    let half_width = ZERO_CROSSINGS / cutoff;
    let n_out = (input.len() as f64 * ratio).floor() as usize;
    let last = input.len() as isize - 1;
    (0..n_out)
        .map(|i| {
            let t = i as f64 / ratio;
            let start = (t - half_width).ceil() as isize;
            let end = (t + half_width).floor() as isize;
            let mut acc = 0.0;
            for j in start.max(0)..=end.min(last) {
                let d = t - j as f64;
                let x = cutoff * d;
                let sinc = if x.abs() < 1e-12 {
                    1.0
                } else {
                    (PI * x).sin() / (PI * x)
                };
                let window = 0.5 + 0.5 * (PI * d / half_width).cos();
                acc += f64::from(input[j as usize]) * cutoff * sinc * window;
            }
            acc as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: u32, seconds: f64) -> Vec<f32> {
        (0..(f64::from(rate) * seconds) as usize)
            .map(|i| (2.0 * PI * freq * i as f64 / f64::from(rate)).sin() as f32)
            .collect()
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn keeps_a_tone_in_band_and_length_in_proportion() {
        let out = resample(&tone(1_000.0, 22_050, 1.0), 22_050, 16_000);
        assert_eq!(out.len(), 16_000);
        let expected = tone(1_000.0, 16_000, 1.0);
        let middle = 1_000..15_000;
        let err: f64 = middle
            .clone()
            .map(|i| f64::from(out[i] - expected[i]).powi(2))
            .sum::<f64>()
            / middle.len() as f64;
        assert!(
            err.sqrt() < 0.01,
            "in-band tone preserved (rms error {})",
            err.sqrt()
        );
    }

    #[test]
    fn removes_what_the_new_rate_cannot_carry() {
        // 10 kHz is above 16 kHz's Nyquist frequency: linear interpolation would fold it to 6 kHz.
        let out = resample(&tone(10_000.0, 22_050, 1.0), 22_050, 16_000);
        assert!(
            rms(&out[500..15_500]) < 0.02,
            "aliased energy {}",
            rms(&out[500..15_500])
        );
    }

    #[test]
    fn upsampling_and_identity() {
        let out = resample(&tone(440.0, 8_000, 0.5), 8_000, 16_000);
        assert_eq!(out.len(), 8_000);
        assert!((rms(&out[500..7_500]) - std::f64::consts::FRAC_1_SQRT_2).abs() < 0.02);
        assert_eq!(resample(&[0.5, 0.25], 16_000, 16_000), vec![0.5, 0.25]);
    }
}
