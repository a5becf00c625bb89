//! What a call does with each event of its transport: audio to its channel's STT actor (a
//! full mailbox drops the frame, counted), DTMF, pings, the end of the stream.

use super::*;

impl CallActor {
    pub(super) fn on_audio(
        &mut self,
        channel: usize,
        pcm: bytes::Bytes,
        source: Option<crate::media::SourceAudio>,
    ) {
        if self.phase != Phase::Live {
            return;
        }
        self.counters.frames_in += 1;
        let millis = (pcm.len() / 32) as u32;
        let now = crate::clock::now();
        self.last_audio = now;
        self.counters.audio_ms += u64::from(millis);
        if !self.counters.audio_too_fast && channel == 0 {
            let wall = now.duration_since(self.created).as_millis() as u64;
            if self.counters.audio_ms > wall + TOO_FAST_AHEAD_MS {
                self.counters.audio_too_fast = true;
                tracing::warn!(call_id = ?self.call_id, audio_ms = self.counters.audio_ms, wall_ms = wall,
                    "audio is arriving far faster than real time");
            }
        }
        if channel == 0 {
            if let Some(recorder) = &mut self.recorder {
                recorder.push(pcm.clone());
            }
        }
        let delivered = self.stt.get(channel).is_some_and(|stt| {
            stt.try_send(SttAudio {
                pcm,
                millis,
                source,
            })
            .is_ok()
        });
        if delivered {
            self.stt_mailbox.sent();
            self.frames_ok.inc();
        } else {
            self.counters.frames_dropped += 1;
            self.frames_lost.inc();
        }
    }

    pub(super) fn on_media(&mut self, event: MediaEvent, ctx: &mut Context<Self>) {
        match event {
            MediaEvent::Audio {
                channel,
                pcm,
                source,
            } => self.on_audio(channel, pcm, source),
            MediaEvent::Invalid(reason) => {
                self.counters.frames_in += 1;
                self.counters.frames_invalid += 1;
                self.frames_bad.inc();
                if self.counters.frames_invalid <= INVALID_LOG_LIMIT {
                    tracing::warn!(call_id = ?self.call_id, %reason, "invalid audio skipped");
                }
            }
            MediaEvent::Gap(missing) => self.counters.frames_missing += missing,
            MediaEvent::Ignored(what) => {
                self.counters.text_ignored += 1;
                if self.counters.text_ignored <= INVALID_LOG_LIMIT {
                    tracing::warn!(call_id = ?self.call_id, %what, "message ignored");
                }
            }
            MediaEvent::Dtmf(digit) => {
                if self.dtmf.len() < 256 {
                    self.dtmf.push_str(&digit);
                }
                tracing::info!(call_id = ?self.call_id, %digit, "DTMF");
            }
            MediaEvent::Ping(payload) => {
                let _ = self.out.try_send(Outbound::Pong(payload));
            }
            MediaEvent::Stop => self.begin_finish(EndReason::ClientStop, ctx),
            MediaEvent::Closed => self.begin_finish(EndReason::ClientClosed, ctx),
            MediaEvent::Lost(detail) => {
                tracing::info!(call_id = ?self.call_id, %detail, "connection lost");
                self.begin_finish(EndReason::ConnectionLost, ctx)
            }
            MediaEvent::ProtocolError { too_big, detail } => {
                tracing::warn!(call_id = ?self.call_id, %detail, "media protocol error");
                self.begin_finish(
                    EndReason::ProtocolError {
                        message_too_big: too_big,
                        detail,
                    },
                    ctx,
                );
            }
        }
    }
}
