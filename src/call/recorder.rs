//! The engine's own recording of a call's inbound audio, for tenants that enable it
//! (`postcall_config.record_calls`): 16 kHz mono s16le frames streamed to
//! `DATA_DIR/recordings/<call id>.wav` by a writer thread (never held in memory), the WAV
//! header's sizes written when the call ends.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// Frames queued towards the disk before new ones are dropped (and counted).
const QUEUE: usize = 500;

/// A call's recording in progress.
pub struct Recorder {
    frames: Option<mpsc::Sender<Bytes>>,
    done: Option<oneshot::Receiver<Result<PathBuf, String>>>,
    pub dropped: u64,
}

fn header(data_len: u32) -> [u8; 44] {
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(36 + data_len).to_le_bytes());
    h[8..16].copy_from_slice(b"WAVEfmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes());
    h[22..24].copy_from_slice(&1u16.to_le_bytes());
    h[24..28].copy_from_slice(&16_000u32.to_le_bytes());
    h[28..32].copy_from_slice(&32_000u32.to_le_bytes());
    h[32..34].copy_from_slice(&2u16.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

fn write_all(path: &Path, mut frames: mpsc::Receiver<Bytes>) -> Result<PathBuf, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("recordings directory: {e}"))?;
    }
    let file = File::create(path).map_err(|e| format!("recording file: {e}"))?;
    let mut out = BufWriter::new(file);
    out.write_all(&header(0)).map_err(|e| e.to_string())?;
    let mut len: u64 = 0;
    while let Some(frame) = frames.blocking_recv() {
        out.write_all(&frame).map_err(|e| e.to_string())?;
        len += frame.len() as u64;
    }
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    let mut file = out.into_inner().map_err(|e| e.to_string())?;
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    file.write_all(&header(len)).map_err(|e| e.to_string())?;
    file.sync_all().map_err(|e| e.to_string())?;
    Ok(path.to_path_buf())
}

impl Recorder {
    /// Starts writing `path`.
    pub fn start(path: PathBuf) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (done_tx, done_rx) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("call-recorder".into())
            .spawn(move || {
                let _ = done_tx.send(write_all(&path, rx));
            });
        if spawned.is_err() {
            return Self {
                frames: None,
                done: None,
                dropped: 0,
            };
        }
        Self {
            frames: Some(tx),
            done: Some(done_rx),
            dropped: 0,
        }
    }

    /// Queues a frame; a full queue drops it (counted).
    pub fn push(&mut self, frame: Bytes) {
        let queued = self
            .frames
            .as_ref()
            .is_some_and(|f| f.try_send(frame).is_ok());
        if !queued {
            self.dropped += 1;
        }
    }

    /// Ends the file; resolves to its path once the header is written.
    pub fn finish(&mut self) -> impl std::future::Future<Output = Result<PathBuf, String>> {
        self.frames = None;
        let done = self.done.take();
        async move {
            match done {
                Some(done) => done.await.map_err(|_| "recorder stopped".to_string())?,
                None => Err("recorder not running".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_become_a_valid_wav() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r/call.wav");
        let mut recorder = Recorder::start(path.clone());
        for _ in 0..50 {
            recorder.push(Bytes::from(vec![1u8; 640]));
        }
        let written = recorder.finish().await.unwrap();
        let wav = crate::audio::wav::parse(&std::fs::read(&written).unwrap()).unwrap();
        assert_eq!(
            (wav.sample_rate, wav.channels, wav.samples.len()),
            (16_000, 1, 16_000)
        );
        assert_eq!(recorder.dropped, 0);
    }
}
