//! The STT replay buffer, pure: the call's audio from the end of the last final onwards, each
//! piece at its call-time offset, so a fresh provider stream after a reconnect gets exactly the
//! audio the old one never turned into a final. Bounded by duration (the oldest audio goes
//! first); its size in bytes is kept for the operator surface.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::media::SourceAudio;

/// Audio held for a replay: the 16 kHz PCM, or the carrier's smaller encoding of it.
#[derive(Debug, Clone, PartialEq)]
pub enum Held {
    Pcm(Bytes),
    Source(SourceAudio),
}

impl Held {
    pub fn len(&self) -> usize {
        match self {
            Self::Pcm(pcm) => pcm.len(),
            Self::Source(source) => source.bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One stream's replay buffer.
#[derive(Debug)]
pub struct ReplayBuffer {
    /// `(call offset ms, duration ms, audio)`, oldest first.
    held: VecDeque<(i64, i64, Held)>,
    held_ms: i64,
    bytes: usize,
    cap_ms: i64,
    /// The call offset the next piece of audio starts at.
    next_offset_ms: i64,
}

impl ReplayBuffer {
    /// A buffer keeping at most `cap_ms` of audio.
    pub fn new(cap_ms: i64) -> Self {
        Self {
            held: VecDeque::new(),
            held_ms: 0,
            bytes: 0,
            cap_ms: cap_ms.max(0),
            next_offset_ms: 0,
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Milliseconds of audio held now.
    pub fn held_ms(&self) -> i64 {
        self.held_ms
    }

    /// Takes `millis` of audio; returns its call offset. Audio past the cap pushes out the
    /// oldest.
    pub fn push(&mut self, millis: i64, audio: Held) -> i64 {
        let offset = self.next_offset_ms;
        self.next_offset_ms += millis;
        self.bytes += audio.len();
        self.held.push_back((offset, millis, audio));
        self.held_ms += millis;
        while self.held_ms > self.cap_ms {
            let Some((_, dropped, audio)) = self.held.pop_front() else {
                break;
            };
            self.held_ms -= dropped;
            self.bytes -= audio.len();
        }
        offset
    }

    /// A final covers the call up to `until_ms`: audio that ends by then is no longer needed.
    pub fn trim(&mut self, until_ms: i64) {
        while let Some((offset, millis, _)) = self.held.front() {
            if offset + millis > until_ms {
                break;
            }
            self.held_ms -= millis;
            if let Some((_, _, audio)) = self.held.pop_front() {
                self.bytes -= audio.len();
            }
        }
    }

    /// Where a fresh stream starts: the oldest audio held, or the next audio if none is.
    pub fn start_offset_ms(&self) -> i64 {
        self.held
            .front()
            .map_or(self.next_offset_ms, |(offset, _, _)| *offset)
    }

    /// The audio to replay, oldest first, with its call offsets.
    pub fn pending(&self) -> Vec<(i64, Held)> {
        self.held
            .iter()
            .map(|(offset, _, audio)| (*offset, audio.clone()))
            .collect()
    }

    /// Empties the buffer (the call is over); returns the bytes it held.
    pub fn clear(&mut self) -> usize {
        self.held.clear();
        self.held_ms = 0;
        std::mem::take(&mut self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::normalize::{AudioFormat, Encoding};

    fn pcm(ms: usize) -> Held {
        Held::Pcm(Bytes::from(vec![0u8; ms * 32]))
    }

    #[test]
    fn audio_gets_consecutive_call_offsets_and_is_bounded_by_duration() {
        let mut replay = ReplayBuffer::new(100);
        let offsets: Vec<i64> = (0..8).map(|_| replay.push(20, pcm(20))).collect();
        assert_eq!(offsets, vec![0, 20, 40, 60, 80, 100, 120, 140]);
        // 100 ms kept: the five newest pieces.
        assert_eq!(replay.held_ms(), 100);
        assert_eq!(replay.bytes(), 5 * 640);
        assert_eq!(replay.start_offset_ms(), 60);
        let pending: Vec<i64> = replay.pending().iter().map(|(o, _)| *o).collect();
        assert_eq!(pending, vec![60, 80, 100, 120, 140]);
    }

    #[test]
    fn a_final_trims_only_the_audio_it_covers() {
        let mut replay = ReplayBuffer::new(10_000);
        for _ in 0..5 {
            replay.push(20, pcm(20));
        }
        // A final ending at 50 ms covers [0, 20) and [20, 40) but not [40, 60).
        replay.trim(50);
        assert_eq!(replay.start_offset_ms(), 40);
        assert_eq!((replay.held_ms(), replay.bytes()), (60, 3 * 640));
        replay.trim(1_000);
        assert_eq!((replay.held_ms(), replay.bytes()), (0, 0));
        // Empty: a fresh stream starts where the next audio will.
        assert_eq!(replay.start_offset_ms(), 100);
    }

    #[test]
    fn carrier_audio_is_held_at_its_own_size_and_cleared_with_its_bytes() {
        let mut replay = ReplayBuffer::new(10_000);
        let ulaw = Held::Source(SourceAudio {
            format: AudioFormat {
                encoding: Encoding::Mulaw,
                sample_rate: 8_000,
                channels: 1,
            },
            bytes: Bytes::from(vec![0xffu8; 160]),
        });
        replay.push(20, ulaw.clone());
        replay.push(20, pcm(20));
        assert_eq!(replay.bytes(), 160 + 640);
        assert_eq!(replay.pending()[0].1, ulaw);
        assert_eq!(replay.clear(), 800);
        assert_eq!((replay.bytes(), replay.held_ms()), (0, 0));
        assert!(replay.pending().is_empty());
    }

    #[test]
    fn a_zero_cap_holds_nothing() {
        let mut replay = ReplayBuffer::new(0);
        assert_eq!(replay.push(20, pcm(20)), 0);
        assert_eq!((replay.bytes(), replay.held_ms()), (0, 0));
        assert_eq!(replay.start_offset_ms(), 20);
    }
}
