//! The Whisper encoder–decoder on candle (f32, CPU), loaded from HuggingFace-named tensors.
//! The decoder keeps a key/value cache: each step feeds only the new token, and cross-attention
//! keys and values are computed once per audio window.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{
    conv1d, embedding, layer_norm, linear, linear_no_bias, Conv1d, Conv1dConfig, Embedding,
    LayerNorm, Linear, VarBuilder,
};

/// Model dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub n_mels: usize,
    pub n_audio_state: usize,
    pub n_text_ctx: usize,
    pub n_vocab: usize,
    pub n_head: usize,
    pub n_audio_layer: usize,
    pub n_text_layer: usize,
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    n_head: usize,
    cache: Option<(Tensor, Tensor)>,
}

impl Attention {
    fn load(n_state: usize, n_head: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q: linear(n_state, n_state, vb.pp("q_proj"))?,
            k: linear_no_bias(n_state, n_state, vb.pp("k_proj"))?,
            v: linear(n_state, n_state, vb.pp("v_proj"))?,
            out: linear(n_state, n_state, vb.pp("out_proj"))?,
            n_head,
            cache: None,
        })
    }

    /// Self-attention (`source = None`, keys grow with the cache) or cross-attention (keys and
    /// values of `source`, computed once and cached).
    fn forward(
        &mut self,
        x: &Tensor,
        source: Option<&Tensor>,
        causal: bool,
        use_cache: bool,
    ) -> Result<Tensor> {
        let q = self.q.forward(x)?;
        let (k, v) = match source {
            None => {
                let (mut k, mut v) = (self.k.forward(x)?, self.v.forward(x)?);
                if use_cache {
                    if let Some((pk, pv)) = &self.cache {
                        k = Tensor::cat(&[pk, &k], 1)?;
                        v = Tensor::cat(&[pv, &v], 1)?;
                    }
                    self.cache = Some((k.clone(), v.clone()));
                }
                (k, v)
            }
            Some(source) => match (&self.cache, use_cache) {
                (Some((k, v)), true) => (k.clone(), v.clone()),
                _ => {
                    let (k, v) = (self.k.forward(source)?, self.v.forward(source)?);
                    if use_cache {
                        self.cache = Some((k.clone(), v.clone()));
                    }
                    (k, v)
                }
            },
        };
        let attended = self.attend(&q, &k, &v, causal)?;
        self.out.forward(&attended)
    }

    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, s) = x.dims3()?;
        x.reshape((b, t, self.n_head, s / self.n_head))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
        let (_, n_ctx, n_state) = q.dims3()?;
        let scale = ((n_state / self.n_head) as f64).powf(-0.25);
        let q = (self.heads(q)? * scale)?;
        let k = (self.heads(k)?.transpose(2, 3)? * scale)?.contiguous()?;
        let v = self.heads(v)?;
        let mut scores = q.matmul(&k)?;
        let n_keys = scores.dim(D::Minus1)?;
        if causal && n_ctx > 1 {
            // New tokens see every cached key and the new ones up to themselves.
            let past = n_keys - n_ctx;
            let mask: Vec<f32> = (0..n_ctx)
                .flat_map(|i| {
                    (0..n_keys).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (n_ctx, n_keys), q.device())?;
            scores = scores.broadcast_add(&mask)?;
        }
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        weights.matmul(&v)?.transpose(1, 2)?.flatten_from(2)
    }
}

struct Block {
    attn: Attention,
    attn_ln: LayerNorm,
    cross: Option<(Attention, LayerNorm)>,
    fc1: Linear,
    fc2: Linear,
    mlp_ln: LayerNorm,
}

impl Block {
    fn load(n_state: usize, n_head: usize, cross: bool, vb: VarBuilder) -> Result<Self> {
        let cross = match cross {
            true => Some((
                Attention::load(n_state, n_head, vb.pp("encoder_attn"))?,
                layer_norm(n_state, 1e-5, vb.pp("encoder_attn_layer_norm"))?,
            )),
            false => None,
        };
        Ok(Self {
            attn: Attention::load(n_state, n_head, vb.pp("self_attn"))?,
            attn_ln: layer_norm(n_state, 1e-5, vb.pp("self_attn_layer_norm"))?,
            cross,
            fc1: linear(n_state, 4 * n_state, vb.pp("fc1"))?,
            fc2: linear(4 * n_state, n_state, vb.pp("fc2"))?,
            mlp_ln: layer_norm(n_state, 1e-5, vb.pp("final_layer_norm"))?,
        })
    }

    fn forward(
        &mut self,
        x: &Tensor,
        audio: Option<&Tensor>,
        causal: bool,
        use_cache: bool,
    ) -> Result<Tensor> {
        let mut x = (x + self
            .attn
            .forward(&self.attn_ln.forward(x)?, None, causal, use_cache)?)?;
        if let (Some((cross, ln)), Some(audio)) = (&mut self.cross, audio) {
            x = (&x + cross.forward(&ln.forward(&x)?, Some(audio), false, use_cache)?)?;
        }
        let mlp = self
            .fc2
            .forward(&self.fc1.forward(&self.mlp_ln.forward(&x)?)?.gelu_erf()?)?;
        x + mlp
    }

    fn reset(&mut self) {
        self.attn.cache = None;
        if let Some((cross, _)) = &mut self.cross {
            cross.cache = None;
        }
    }
}

/// The audio encoder.
pub struct Encoder {
    conv1: Conv1d,
    conv2: Conv1d,
    positions: Tensor,
    blocks: Vec<Block>,
    ln_post: LayerNorm,
}

impl Encoder {
    fn load(dims: Dims, vb: VarBuilder) -> Result<Self> {
        let n = dims.n_audio_state;
        let one = Conv1dConfig {
            padding: 1,
            ..Default::default()
        };
        let two = Conv1dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        let blocks = (0..dims.n_audio_layer)
            .map(|i| Block::load(n, dims.n_head, false, vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv1: conv1d(dims.n_mels, n, 3, one, vb.pp("conv1"))?,
            conv2: conv1d(n, n, 3, two, vb.pp("conv2"))?,
            positions: vb.get((1500, n), "embed_positions.weight")?,
            blocks,
            ln_post: layer_norm(n, 1e-5, vb.pp("layer_norm"))?,
        })
    }

    /// `mel`: `[1, n_mels, 3000]` → `[1, 1500, n_state]`.
    pub fn forward(&mut self, mel: &Tensor) -> Result<Tensor> {
        let x = self.conv1.forward(mel)?.gelu_erf()?;
        let x = self.conv2.forward(&x)?.gelu_erf()?.transpose(1, 2)?;
        let frames = x.dim(1)?;
        let mut x = x.broadcast_add(&self.positions.narrow(0, 0, frames)?)?;
        for block in &mut self.blocks {
            x = block.forward(&x, None, false, false)?;
        }
        self.ln_post.forward(&x)
    }
}

/// Self-attention keys and values of one decoding hypothesis.
#[derive(Clone)]
pub struct SelfCache(Vec<Option<(Tensor, Tensor)>>);

/// The text decoder.
pub struct Decoder {
    tokens: Embedding,
    positions: Tensor,
    blocks: Vec<Block>,
    ln: LayerNorm,
}

impl Decoder {
    fn load(dims: Dims, vb: VarBuilder) -> Result<Self> {
        let n = dims.n_audio_state;
        let blocks = (0..dims.n_text_layer)
            .map(|i| Block::load(n, dims.n_head, true, vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            tokens: embedding(dims.n_vocab, n, vb.pp("embed_tokens"))?,
            positions: vb.get((dims.n_text_ctx, n), "embed_positions.weight")?,
            blocks,
            ln: layer_norm(n, 1e-5, vb.pp("layer_norm"))?,
        })
    }

    /// Forgets cached keys and values (new audio window).
    pub fn reset(&mut self) {
        self.blocks.iter_mut().for_each(Block::reset);
    }

    /// The self-attention keys and values of the tokens fed so far, one entry per block.
    /// Cheap (tensors share their storage): beam search keeps one per hypothesis. The
    /// cross-attention cache depends only on the audio and is shared by every hypothesis.
    pub fn self_cache(&self) -> SelfCache {
        SelfCache(self.blocks.iter().map(|b| b.attn.cache.clone()).collect())
    }

    /// Continues from a cache taken with [`Decoder::self_cache`] on the same audio window.
    pub fn set_self_cache(&mut self, cache: &SelfCache) {
        for (block, entry) in self.blocks.iter_mut().zip(&cache.0) {
            block.attn.cache = entry.clone();
        }
    }

    /// Feeds `tokens` at positions `offset..`; returns the logits of the last one.
    pub fn next_logits(
        &mut self,
        tokens: &[u32],
        audio: &Tensor,
        offset: usize,
    ) -> Result<Vec<f32>> {
        let ids = Tensor::new(tokens, audio.device())?.unsqueeze(0)?;
        let positions = self.positions.narrow(0, offset, tokens.len())?;
        let mut x = self.tokens.forward(&ids)?.broadcast_add(&positions)?;
        for block in &mut self.blocks {
            x = block.forward(&x, Some(audio), true, true)?;
        }
        let x = self.ln.forward(&x)?;
        let last = x.narrow(1, tokens.len() - 1, 1)?.squeeze(1)?;
        let logits = last.matmul(&self.tokens.embeddings().t()?)?;
        logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()
    }
}

/// Encoder and decoder.
pub struct Whisper {
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub dims: Dims,
}

impl Whisper {
    /// Loads from HuggingFace-named tensors.
    pub fn load(vb: VarBuilder, dims: Dims) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::load(dims, vb.pp("model.encoder"))?,
            decoder: Decoder::load(dims, vb.pp("model.decoder"))?,
            dims,
        })
    }
}

/// The CPU device.
pub fn cpu() -> Device {
    Device::Cpu
}
