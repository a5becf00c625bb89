//! One loaded Whisper model that turns up to 30 s of 16 kHz audio into text (greedy decoding,
//! English-only prompt, no timestamps). Blocking and CPU-heavy: run it on worker threads, never
//! on actor threads.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::ct2;
use super::fetch::{detect_layout, ModelLayout};
use super::mel::{MelFrontEnd, N_BINS_PUBLIC, N_FRAMES, N_MELS};
use super::model::{cpu, Dims, Whisper};
use super::tokens::{Vocabulary, EOT, NO_TIMESTAMPS, SOT, SPACE};

/// Longest transcript decoded from one window.
const MAX_TOKENS: usize = 224;

/// Why the engine could not load or run.
#[derive(Debug, thiserror::Error)]
pub enum WhisperError {
    #[error("no Whisper model in {0} (run `callengine model fetch`)")]
    NoModel(String),
    #[error("cannot read the model: {0}")]
    Read(String),
    #[error("inference failed: {0}")]
    Inference(#[from] candle_core::Error),
}

/// A loaded model with its vocabulary and front end.
pub struct WhisperEngine {
    model: Whisper,
    vocab: Vocabulary,
    front: MelFrontEnd,
    filters: Tensor,
    suppress: Vec<u32>,
}

impl WhisperEngine {
    /// Loads a model directory in CTranslate2 or HuggingFace layout.
    pub fn load(dir: &Path) -> Result<Self, WhisperError> {
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| WhisperError::Read(format!("{name}: {e}")))
        };
        let device = cpu();
        let (tensors, vocab, n_head, suppress) = match detect_layout(dir) {
            None => return Err(WhisperError::NoModel(dir.display().to_string())),
            Some(ModelLayout::CTranslate2) => {
                let model = ct2::parse(&read("model.bin")?)
                    .map_err(|e| WhisperError::Read(e.to_string()))?;
                let n_head = scalar(&model, "encoder/num_heads").unwrap_or(6);
                let mut tensors = HashMap::new();
                for (name, raw) in
                    ct2::to_hf_names(&model).map_err(|e| WhisperError::Read(e.to_string()))?
                {
                    let values = raw
                        .to_f32()
                        .map_err(|e| WhisperError::Read(e.to_string()))?;
                    tensors.insert(
                        name,
                        Tensor::from_vec(values, raw.shape.as_slice(), &device)?,
                    );
                }
                let vocab = match read("vocabulary.txt") {
                    Ok(bytes) => Vocabulary::from_lines(&String::from_utf8_lossy(&bytes)),
                    Err(_) => Vocabulary::from_tokenizer_json(&String::from_utf8_lossy(&read(
                        "tokenizer.json",
                    )?))
                    .map_err(WhisperError::Read)?,
                };
                let config: serde_json::Value =
                    serde_json::from_slice(&read("config.json")?).unwrap_or_default();
                (tensors, vocab, n_head, ids(&config["suppress_ids"]))
            }
            Some(ModelLayout::HuggingFace) => {
                let tensors =
                    candle_core::safetensors::load(dir.join("model.safetensors"), &device)?
                        .into_iter()
                        .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
                        .collect::<Result<HashMap<_, _>, candle_core::Error>>()?;
                let vocab = Vocabulary::from_tokenizer_json(&String::from_utf8_lossy(&read(
                    "tokenizer.json",
                )?))
                .map_err(WhisperError::Read)?;
                let config: serde_json::Value =
                    serde_json::from_slice(&read("config.json")?).unwrap_or_default();
                let n_head = config["encoder_attention_heads"].as_u64().unwrap_or(6) as usize;
                (tensors, vocab, n_head, ids(&config["suppress_tokens"]))
            }
        };
        let dims = dims_of(&tensors, n_head)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = Whisper::load(vb, dims)?;
        let front = MelFrontEnd::new();
        let filters = Tensor::from_vec(front.filters().to_vec(), (N_MELS, N_BINS_PUBLIC), &device)?;
        Ok(Self {
            model,
            vocab,
            front,
            filters,
            suppress,
        })
    }

    /// Transcribes up to 30 s of 16 kHz mono samples in `[-1, 1]`.
    pub fn transcribe(&mut self, samples: &[f32]) -> Result<String, WhisperError> {
        let mel = self.log_mel(samples)?;
        let audio = self.model.encoder.forward(&mel)?;
        let decoder = &mut self.model.decoder;
        decoder.reset();
        let n_vocab = self.model.dims.n_vocab;
        let mut text_tokens = Vec::new();
        let mut input = vec![SOT, NO_TIMESTAMPS];
        let mut offset = 0;
        for step in 0..MAX_TOKENS {
            if offset + input.len() > self.model.dims.n_text_ctx {
                break;
            }
            let mut logits = decoder.next_logits(&input, &audio, offset)?;
            offset += input.len();
            // Only ordinary text tokens or the end: no specials, no timestamps.
            for l in logits.iter_mut().take(n_vocab).skip(EOT as usize + 1) {
                *l = f32::NEG_INFINITY;
            }
            for id in &self.suppress {
                if let Some(l) = logits.get_mut(*id as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
            if step == 0 {
                logits[SPACE as usize] = f32::NEG_INFINITY;
                logits[EOT as usize] = f32::NEG_INFINITY;
            }
            let next = argmax(&logits);
            if next == EOT {
                break;
            }
            text_tokens.push(next);
            input = vec![next];
        }
        Ok(self.vocab.decode(&text_tokens))
    }

    fn log_mel(&self, samples: &[f32]) -> Result<Tensor, WhisperError> {
        let device = cpu();
        let power = Tensor::from_vec(
            self.front.power_spectrogram(samples),
            (N_BINS_PUBLIC, N_FRAMES),
            &device,
        )?;
        let mel = self.filters.matmul(&power)?.clamp(1e-10f32, f32::MAX)?;
        let log = (mel.log()? / std::f64::consts::LN_10)?;
        let max = log.max_all()?.to_scalar::<f32>()?;
        let log = log.clamp(max - 8.0, f32::MAX)?;
        Ok(((log + 4.0)? / 4.0)?.unsqueeze(0)?)
    }
}

fn argmax(values: &[f32]) -> u32 {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(EOT, |(i, _)| i as u32)
}

fn ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect()
        })
        .unwrap_or_default()
}

fn scalar(model: &ct2::Ct2Model, name: &str) -> Option<usize> {
    let raw = model.variables.get(name)?;
    match raw.data.as_slice() {
        [a, b] => Some(u16::from_le_bytes([*a, *b]) as usize),
        [a] => Some(*a as usize),
        [a, b, c, d] => Some(u32::from_le_bytes([*a, *b, *c, *d]) as usize),
        _ => None,
    }
}

fn dims_of(tensors: &HashMap<String, Tensor>, n_head: usize) -> Result<Dims, WhisperError> {
    let dims = |name: &str| {
        tensors
            .get(name)
            .map(|t| t.dims().to_vec())
            .ok_or_else(|| WhisperError::Read(format!("missing {name}")))
    };
    let conv1 = dims("model.encoder.conv1.weight")?;
    let embed = dims("model.decoder.embed_tokens.weight")?;
    let text_ctx = dims("model.decoder.embed_positions.weight")?;
    let count = |side: &str| {
        (0..)
            .take_while(|i| tensors.contains_key(&format!("model.{side}.layers.{i}.fc1.weight")))
            .count()
    };
    Ok(Dims {
        n_mels: conv1[1],
        n_audio_state: conv1[0],
        n_text_ctx: text_ctx[0],
        n_vocab: embed[0],
        n_head,
        n_audio_layer: count("encoder"),
        n_text_layer: count("decoder"),
    })
}
