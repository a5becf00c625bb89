//! One loaded Whisper model that turns up to 30 s of 16 kHz audio into text (beam search or
//! greedy, English-only prompt, no timestamps). Blocking and CPU-heavy: run it on worker threads, never
//! on actor threads.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::ct2;
use super::fetch::{detect_layout, ModelLayout};
use super::mel::{MelFrontEnd, N_BINS_PUBLIC, N_FRAMES, N_MELS};
use super::model::{cpu, Dims, SelfCache, Whisper};
use super::tokens::{Vocabulary, EOT, NO_TIMESTAMPS, SOT, SPACE};

/// Longest transcript decoded from one window.
const MAX_TOKENS: usize = 224;

/// The decoder's prompt: start of transcript, no timestamps (English-only model).
const PROMPT: [u32; 2] = [SOT, NO_TIMESTAMPS];

/// Beam width of [`WhisperEngine::transcribe`] (faster-whisper's default).
pub const DEFAULT_BEAM: usize = 5;

/// A decoded window.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The transcript.
    pub text: String,
    /// Mean log-probability per token of the chosen hypothesis (0 for an empty one).
    pub avg_logprob: f64,
}

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

    /// Transcribes up to 30 s of 16 kHz mono samples in `[-1, 1]` with beam search of
    /// [`DEFAULT_BEAM`] hypotheses.
    pub fn transcribe(&mut self, samples: &[f32]) -> Result<String, WhisperError> {
        Ok(self.decode(samples, DEFAULT_BEAM)?.text)
    }

    /// Transcribes with `beam` hypotheses (1: greedy, the cheapest).
    pub fn decode(&mut self, samples: &[f32], beam: usize) -> Result<Decoded, WhisperError> {
        let mel = self.log_mel(samples)?;
        let audio = self.model.encoder.forward(&mel)?;
        let limit = MAX_TOKENS.min(self.model.dims.n_text_ctx - PROMPT.len());
        let decoder = &mut self.model.decoder;
        decoder.reset();
        let first = decoder.next_logits(&PROMPT, &audio, 0)?;
        let (tokens, logprob) = if beam <= 1 {
            self.greedy(first, &audio, limit)?
        } else {
            self.beam_search(first, &audio, limit, beam)?
        };
        Ok(Decoded {
            text: self.vocab.decode(&tokens),
            avg_logprob: logprob / tokens.len().max(1) as f64,
        })
    }

    fn greedy(
        &mut self,
        mut logits: Vec<f32>,
        audio: &Tensor,
        limit: usize,
    ) -> Result<(Vec<u32>, f64), WhisperError> {
        let mut tokens = Vec::new();
        let mut logprob = 0.0;
        for step in 0..limit {
            self.mask(&mut logits, step == 0);
            let next = argmax(&logits);
            if next == EOT {
                break;
            }
            logprob += log_softmax_at(&logits, next);
            tokens.push(next);
            let offset = PROMPT.len() + step;
            logits = self.model.decoder.next_logits(&[next], audio, offset)?;
        }
        Ok((tokens, logprob))
    }

    /// Beam search as in openai-whisper and CTranslate2: each step extends every hypothesis by
    /// its `beam + 1` likeliest tokens, keeps the `beam` best continuations, and sets aside
    /// those that end; it stops once `beam` have ended and returns the best by log-probability
    /// per token.
    fn beam_search(
        &mut self,
        first: Vec<f32>,
        audio: &Tensor,
        limit: usize,
        beam: usize,
    ) -> Result<(Vec<u32>, f64), WhisperError> {
        struct Hypothesis {
            tokens: Vec<u32>,
            logprob: f64,
            logits: Vec<f32>,
            cache: SelfCache,
        }
        let mut live = vec![Hypothesis {
            tokens: Vec::new(),
            logprob: 0.0,
            logits: first,
            cache: self.model.decoder.self_cache(),
        }];
        let mut ended: Vec<(Vec<u32>, f64)> = Vec::new();
        for step in 0..limit {
            let mut candidates: Vec<(usize, u32, f64)> =
                Vec::with_capacity(live.len() * (beam + 1));
            for (index, hypothesis) in live.iter_mut().enumerate() {
                let mut logits = std::mem::take(&mut hypothesis.logits);
                self.mask(&mut logits, step == 0);
                let norm = log_sum_exp(&logits);
                for (token, logit) in top_k(&logits, beam + 1) {
                    candidates.push((index, token, hypothesis.logprob + f64::from(logit) - norm));
                }
            }
            candidates.sort_by(|a, b| b.2.total_cmp(&a.2));
            let mut continuing: Vec<(usize, u32, f64)> = Vec::with_capacity(beam);
            for (index, token, logprob) in candidates {
                if token == EOT {
                    ended.push((live[index].tokens.clone(), logprob));
                } else {
                    continuing.push((index, token, logprob));
                    if continuing.len() == beam {
                        break;
                    }
                }
            }
            if ended.len() >= beam || continuing.is_empty() {
                break;
            }
            let mut next = Vec::with_capacity(continuing.len());
            for (parent, token, logprob) in continuing {
                let parent = &live[parent];
                let decoder = &mut self.model.decoder;
                decoder.set_self_cache(&parent.cache);
                let logits = decoder.next_logits(&[token], audio, PROMPT.len() + step)?;
                let mut tokens = parent.tokens.clone();
                tokens.push(token);
                next.push(Hypothesis {
                    tokens,
                    logprob,
                    logits,
                    cache: decoder.self_cache(),
                });
            }
            live = next;
        }
        if ended.len() < beam {
            ended.extend(live.into_iter().map(|h| (h.tokens, h.logprob)));
        }
        let score = |(tokens, logprob): &(Vec<u32>, f64)| logprob / tokens.len().max(1) as f64;
        Ok(ended
            .into_iter()
            .max_by(|a, b| score(a).total_cmp(&score(b)))
            .unwrap_or_default())
    }

    /// Only ordinary text tokens or the end: no specials, no timestamps, nothing the model
    /// config suppresses; and no blank or empty start.
    fn mask(&self, logits: &mut [f32], first: bool) {
        let n_vocab = self.model.dims.n_vocab.min(logits.len());
        for l in logits.iter_mut().take(n_vocab).skip(EOT as usize + 1) {
            *l = f32::NEG_INFINITY;
        }
        for id in &self.suppress {
            if let Some(l) = logits.get_mut(*id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        if first {
            logits[SPACE as usize] = f32::NEG_INFINITY;
            logits[EOT as usize] = f32::NEG_INFINITY;
        }
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

/// `ln Σ exp(l)` over the finite logits.
fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return 0.0;
    }
    let sum: f64 = logits
        .iter()
        .filter(|l| l.is_finite())
        .map(|l| f64::from(l - max).exp())
        .sum();
    f64::from(max) + sum.ln()
}

fn log_softmax_at(logits: &[f32], token: u32) -> f64 {
    f64::from(logits[token as usize]) - log_sum_exp(logits)
}

/// The `k` largest finite logits, largest first.
fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &l) in logits.iter().enumerate() {
        if !l.is_finite() || (best.len() == k && l <= best[k - 1].1) {
            continue;
        }
        let at = best.partition_point(|&(_, b)| b >= l);
        best.insert(at, (i as u32, l));
        best.truncate(k);
    }
    best
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_largest_finite_logits_in_order() {
        let logits = [0.5, f32::NEG_INFINITY, 3.0, -1.0, 2.0, 3.0];
        assert_eq!(top_k(&logits, 3), vec![(2, 3.0), (5, 3.0), (4, 2.0)]);
        assert_eq!(top_k(&[f32::NEG_INFINITY], 2), vec![]);
    }

    #[test]
    fn log_softmax_ignores_masked_logits() {
        let logits = [0.0, 0.0, f32::NEG_INFINITY];
        assert!((log_softmax_at(&logits, 0) - 0.5f64.ln()).abs() < 1e-9);
    }
}
