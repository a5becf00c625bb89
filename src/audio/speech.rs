//! Where speech is in a recording: stretches of 20 ms frames above an RMS level, split by
//! silences of at least a given length. The load generator uses it to time each `final` from
//! the moment the caller actually stopped speaking in the file it plays — what a caller feels —
//! rather than from the end time the speech-to-text provider reports.

/// One stretch of speech, in ms from the start of the audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeechSegment {
    pub start_ms: i64,
    pub end_ms: i64,
}

/// Bytes of one 20 ms frame of s16le 16 kHz mono.
const FRAME_BYTES: usize = 640;
const FRAME_MS: i64 = 20;

/// The speech stretches of `pcm` (s16le 16 kHz mono): a frame is speech when its RMS reaches
/// `threshold`; a stretch ends at its last speech frame once `min_silence_ms` of non-speech
/// follow (or the audio ends).
pub fn speech_segments(pcm: &[u8], threshold: f64, min_silence_ms: i64) -> Vec<SpeechSegment> {
    let mut segments = Vec::new();
    let mut open: Option<SpeechSegment> = None;
    for (k, frame) in pcm.chunks_exact(FRAME_BYTES).enumerate() {
        let at = k as i64 * FRAME_MS;
        if super::pcm::rms_s16le(frame) >= threshold {
            match &mut open {
                Some(segment) if at - segment.end_ms < min_silence_ms => {
                    segment.end_ms = at + FRAME_MS
                }
                _ => {
                    segments.extend(open.take());
                    open = Some(SpeechSegment {
                        start_ms: at,
                        end_ms: at + FRAME_MS,
                    });
                }
            }
        }
    }
    segments.extend(open);
    segments
}

/// The end of the speech a turn heard: among `segments` of a clip of `clip_ms` played in a loop,
/// the one overlapping `[start_ms, end_ms]` (call time) the most, else the one whose end is
/// nearest `end_ms`. Call time beyond the clip maps onto its repeats.
pub fn speech_end_for(
    segments: &[SpeechSegment],
    clip_ms: i64,
    start_ms: Option<i64>,
    end_ms: i64,
) -> Option<i64> {
    if segments.is_empty() || clip_ms <= 0 {
        return None;
    }
    let start_ms = start_ms.unwrap_or(end_ms).min(end_ms);
    // Candidates: every segment in the loops the turn touches (and the ones either side).
    let first_loop = (start_ms / clip_ms - 1).max(0);
    let last_loop = end_ms / clip_ms + 1;
    let candidates = (first_loop..=last_loop).flat_map(|n| {
        segments
            .iter()
            .map(move |s| (s.start_ms + n * clip_ms, s.end_ms + n * clip_ms))
    });
    let overlap = |(s, e): (i64, i64)| (e.min(end_ms) - s.max(start_ms)).max(0);
    let best = candidates
        .clone()
        .max_by_key(|&c| (overlap(c), -(c.1 - end_ms).abs()))?;
    if overlap(best) > 0 {
        return Some(best.1);
    }
    candidates
        .min_by_key(|&(_, e)| (e - end_ms).abs())
        .map(|(_, e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pattern`: one char per 20 ms frame, `#` loud, `.` silent.
    fn audio(pattern: &str) -> Vec<u8> {
        pattern
            .chars()
            .flat_map(|c| {
                let level: i16 = if c == '#' { 3_000 } else { 20 };
                (0..320).flat_map(move |i| {
                    let s = if i % 2 == 0 { level } else { -level };
                    s.to_le_bytes()
                })
            })
            .collect()
    }

    #[test]
    fn speech_is_split_by_long_silences_only() {
        // 3 frames of speech, 2 quiet (40 ms: a pause inside a word), 2 speech, 20 quiet, 1.
        let pcm = audio("###..##....................#");
        let segments = speech_segments(&pcm, 300.0, 300);
        assert_eq!(
            segments,
            vec![
                SpeechSegment {
                    start_ms: 0,
                    end_ms: 140
                },
                SpeechSegment {
                    start_ms: 540,
                    end_ms: 560
                },
            ]
        );
        assert!(speech_segments(&audio("....."), 300.0, 300).is_empty());
    }

    #[test]
    fn a_turn_maps_to_the_speech_it_overlaps_even_when_the_clip_loops() {
        let segments = [
            SpeechSegment {
                start_ms: 100,
                end_ms: 1_000,
            },
            SpeechSegment {
                start_ms: 2_000,
                end_ms: 2_600,
            },
        ];
        // Provider times a little off the file's: the overlap decides.
        assert_eq!(
            speech_end_for(&segments, 3_000, Some(80), 1_040),
            Some(1_000)
        );
        assert_eq!(
            speech_end_for(&segments, 3_000, Some(1_900), 2_700),
            Some(2_600)
        );
        // The second play of the clip.
        assert_eq!(
            speech_end_for(&segments, 3_000, Some(5_050), 5_620),
            Some(5_600)
        );
        // No start time and no overlap: the nearest end.
        assert_eq!(speech_end_for(&segments, 3_000, None, 1_500), Some(1_000));
        assert_eq!(speech_end_for(&[], 3_000, None, 1_500), None);
    }
}
