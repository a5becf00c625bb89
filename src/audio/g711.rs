//! G.711 μ-law and A-law to linear s16, by 256-entry tables built at compile time.

/// μ-law byte → s16 (ITU-T G.711).
pub const fn ulaw_to_linear(byte: u8) -> i16 {
    let u = !byte;
    let exponent = (u >> 4) & 0x07;
    let magnitude = ((((u & 0x0F) as i32) << 3) + 0x84) << exponent;
    let sample = magnitude - 0x84;
    if u & 0x80 != 0 {
        -sample as i16
    } else {
        sample as i16
    }
}

/// s16 → μ-law byte (ITU-T G.711; the carrier side, used by the load generator).
pub const fn linear_to_ulaw(sample: i16) -> u8 {
    let mut s = sample as i32;
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    if s > 32_635 {
        s = 32_635;
    }
    s += 0x84;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while s & mask == 0 && exponent > 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// A-law byte → s16 (ITU-T G.711).
pub const fn alaw_to_linear(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let exponent = ((a >> 4) & 0x07) as i32;
    let mantissa = (a & 0x0F) as i32;
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    if a & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

const fn table(alaw: bool) -> [i16; 256] {
    let mut out = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        out[i] = if alaw {
            alaw_to_linear(i as u8)
        } else {
            ulaw_to_linear(i as u8)
        };
        i += 1;
    }
    out
}

/// μ-law decode table.
pub static ULAW: [i16; 256] = table(false);
/// A-law decode table.
pub static ALAW: [i16; 256] = table(true);

/// Decodes μ-law bytes, appending s16 samples to `out`.
#[inline]
pub fn decode_ulaw(bytes: &[u8], out: &mut Vec<i16>) {
    out.extend(bytes.iter().map(|b| ULAW[*b as usize]));
}

/// Decodes A-law bytes, appending s16 samples to `out`.
#[inline]
pub fn decode_alaw(bytes: &[u8], out: &mut Vec<i16>) {
    out.extend(bytes.iter().map(|b| ALAW[*b as usize]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_encoding_round_trips_within_a_quantisation_step() {
        for sample in (i16::MIN..=i16::MAX).step_by(97) {
            let back = i32::from(ulaw_to_linear(linear_to_ulaw(sample)));
            let error = (back - i32::from(sample).clamp(-32_635, 32_635)).abs();
            // μ-law steps grow with the magnitude: 1/16 of it at most, plus rounding.
            let bound = (i32::from(sample).abs() / 16).max(8) + 1;
            assert!(error <= bound, "{sample} -> {back}");
        }
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(ulaw_to_linear(linear_to_ulaw(0)), 0);
    }

    #[test]
    fn ulaw_reference_points() {
        // Silence codes, full scale, and symmetry (G.711 tables).
        assert_eq!(ULAW[0xFF], 0);
        assert_eq!(ULAW[0x7F], 0);
        assert_eq!(ULAW[0x00], -32_124);
        assert_eq!(ULAW[0x80], 32_124);
        assert_eq!(ULAW[0xF0], 120); // a step of the smallest segment
        for b in 0..128u8 {
            assert_eq!(ULAW[b as usize], -ULAW[(b | 0x80) as usize]);
        }
    }

    #[test]
    fn ulaw_is_monotonic_within_each_sign() {
        // 0x80..=0xFF: positive values decreasing to 0; 0x00..=0x7F: negative rising to 0.
        for b in 0x80..0xFFu8 {
            assert!(ULAW[b as usize] > ULAW[b as usize + 1]);
        }
        for b in 0x00..0x7Fu8 {
            assert!(ULAW[b as usize] < ULAW[b as usize + 1]);
        }
    }

    #[test]
    fn alaw_reference_points() {
        assert_eq!(ALAW[0xD5], 8);
        assert_eq!(ALAW[0x55], -8);
        assert_eq!(ALAW[0xAA], 32_256);
        assert_eq!(ALAW[0x2A], -32_256);
    }
}
