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

/// Windowed-sinc kernel value at distance `d` (input samples) for a low-pass at `cutoff`
/// (relative to the input's Nyquist frequency), half width `half_width`.
fn kernel(d: f64, cutoff: f64, half_width: f64) -> f64 {
    if d.abs() >= half_width {
        return 0.0;
    }
    let x = cutoff * d;
    let sinc = if x.abs() < 1e-12 {
        1.0
    } else {
        (PI * x).sin() / (PI * x)
    };
    cutoff * sinc * (0.5 + 0.5 * (PI * d / half_width).cos())
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Streaming resampler for live audio: the same windowed-sinc filter as [`resample`], as a
/// polyphase table over the rational ratio `to/from`, with the input's tail kept between calls
/// so frame boundaries leave no seams. Primed: the output is delayed by the filter's reach
/// (about 2 ms for 8 → 16 kHz) instead of waiting for the next chunk, so every chunk yields
/// all its output at once — 160 samples at 8 kHz give exactly 320 at 16 kHz, from the first
/// chunk on, and a 20 ms frame in is a 20 ms frame out (no frame waits for its successor).
#[derive(Debug, Clone)]
pub struct StreamResampler {
    up: u64,
    down: u64,
    /// Taps per phase; phase `p`'s weights are `table[p * taps..(p + 1) * taps]`.
    taps: usize,
    /// Input offset of the first tap relative to `floor(t)`.
    reach: i64,
    table: Vec<f32>,
    /// Input samples still needed, the first being absolute input index `base`.
    history: Vec<f32>,
    base: u64,
    next_out: u64,
}

impl StreamResampler {
    /// A resampler from `from` Hz to `to` Hz (both non-zero).
    pub fn new(from: u32, to: u32) -> Self {
        let (from, to) = (u64::from(from.max(1)), u64::from(to.max(1)));
        let g = gcd(from, to);
        let (up, down) = (to / g, from / g);
        let ratio = to as f64 / from as f64;
        let cutoff = ratio.min(1.0) * 0.97;
        let half_width = ZERO_CROSSINGS / cutoff;
        let reach = half_width.ceil() as i64;
        let taps = (2 * reach + 1) as usize;
        let mut table = Vec::with_capacity(up as usize * taps);
        for phase in 0..up {
            let frac = phase as f64 / up as f64;
            for k in 0..taps as i64 {
                // Input j = floor(t) + k - reach; distance d = t - j = frac - k + reach.
                let d = frac - (k - reach) as f64;
                table.push(kernel(d, cutoff, half_width) as f32);
            }
        }
        Self {
            up,
            down,
            taps,
            reach,
            table,
            // Silence before the stream: `reach` samples of left padding for the first output's
            // window (absolute indices -reach..0), and `reach` more taken as already received
            // input (0..reach), which delay the output by the filter's look-ahead.
            history: vec![0.0; 2 * reach as usize],
            base: 0,
            next_out: 0,
        }
    }

    /// Output delay in output samples (the priming): the first this many are silence.
    pub fn delay(&self) -> usize {
        (self.reach as u64 * self.up / self.down) as usize
    }

    /// Feeds s16 samples; returns the output samples now complete.
    pub fn process(&mut self, input: &[i16]) -> Vec<i16> {
        let mut out = Vec::with_capacity(input.len() * self.up as usize / self.down as usize + 2);
        self.process_into(input, &mut out);
        out
    }

    /// Like [`StreamResampler::process`], appending to `out` (a buffer the caller reuses).
    pub fn process_into(&mut self, input: &[i16], out: &mut Vec<i16>) {
        if self.up == 1 && self.down == 1 {
            out.extend_from_slice(input);
            return;
        }
        self.history
            .extend(input.iter().map(|s| f32::from(*s) / 32_768.0));
        // `history[0]` is absolute input index `base - reach` (the left padding counts).
        let first = self.base as i64 - self.reach;
        let available_end = first + self.history.len() as i64;
        loop {
            let position = self.next_out * self.down;
            let whole = (position / self.up) as i64;
            let phase = (position % self.up) as usize;
            let start = whole - self.reach;
            if start + self.taps as i64 > available_end {
                break;
            }
            let from = (start - first) as usize;
            let window = &self.history[from..from + self.taps];
            let weights = &self.table[phase * self.taps..(phase + 1) * self.taps];
            out.push(to_i16(dot(window, weights) * 32_768.0));
            self.next_out += 1;
        }
        // Drop input no future output can reach.
        let next_start = (self.next_out * self.down / self.up) as i64 - self.reach;
        let drop = (next_start - first).clamp(0, self.history.len() as i64) as usize;
        self.history.drain(..drop);
        self.base = (first + drop as i64 + self.reach) as u64;
    }
}

/// Dot product in eight independent lanes, which the compiler turns into SIMD (a plain
/// `zip().sum()` of floats must keep its order and stays scalar): the resampler's inner loop.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (a8.remainder(), b8.remainder());
    for (x, w) in a8.zip(b8) {
        for k in 0..8 {
            lanes[k] += x[k] * w[k];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, w)| x * w).sum();
    lanes.iter().sum::<f32>() + tail
}

/// Rounds half away from zero and saturates to i16, without a libm call.
#[inline]
fn to_i16(y: f32) -> i16 {
    ((y + 0.5f32.copysign(y)) as i32).clamp(-32_768, 32_767) as i16
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

    #[test]
    fn streaming_matches_the_whole_buffer_resampler_without_seams() {
        let input = tone(440.0, 8_000, 1.0);
        let whole = resample(&input, 8_000, 16_000);
        let pcm: Vec<i16> = input.iter().map(|v| (v * 16_000.0) as i16).collect();
        let mut stream = StreamResampler::new(8_000, 16_000);
        let mut out = Vec::new();
        for frame in pcm.chunks(160) {
            out.extend(stream.process(frame));
        }
        // Primed: every 20 ms chunk gave its 320 samples, and the content is
        // delayed by the filter's reach.
        assert_eq!(out.len(), 16_000);
        let delay = stream.delay();
        assert!(delay > 0 && delay < 64, "{delay}");
        let out = &out[delay..];
        for (i, (a, b)) in out.iter().zip(&whole).enumerate().skip(40).take(15_000) {
            let expected = b * 16_000.0;
            assert!(
                (f32::from(*a) - expected).abs() < 40.0,
                "sample {i}: {a} vs {expected}"
            );
        }
    }

    #[test]
    fn lane_dot_product_and_rounding_match_the_plain_ones() {
        let a: Vec<f32> = (0..35).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..35).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, w)| x * w).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-5);
        for y in [
            0.0f32, 0.5, -0.5, 1.49, -1.51, 32_767.4, 40_000.0, -40_000.0, 12.5,
        ] {
            assert_eq!(
                to_i16(y),
                y.round().clamp(-32_768.0, 32_767.0) as i16,
                "{y}"
            );
        }
    }

    #[test]
    fn every_carrier_rate_gives_one_frame_out_per_frame_in_from_the_first() {
        for rate in [8_000u32, 24_000, 32_000, 48_000] {
            let mut stream = StreamResampler::new(rate, 16_000);
            let chunk = vec![1_000i16; rate as usize / 50];
            for k in 0..5 {
                assert_eq!(stream.process(&chunk).len(), 320, "{rate} Hz, chunk {k}");
            }
        }
    }

    #[test]
    fn streaming_downsampling_keeps_the_rate_over_time() {
        let pcm: Vec<i16> = tone(300.0, 48_000, 2.0)
            .iter()
            .map(|v| (v * 8_000.0) as i16)
            .collect();
        let mut stream = StreamResampler::new(48_000, 16_000);
        let outs: Vec<usize> = pcm.chunks(960).map(|f| stream.process(f).len()).collect();
        assert!(
            outs.iter().all(|n| *n == 320),
            "one 20 ms chunk, one 20 ms chunk: {outs:?}"
        );
        let mut same = StreamResampler::new(16_000, 16_000);
        assert_eq!(same.process(&[1, 2, 3]), vec![1, 2, 3]);
    }
}
