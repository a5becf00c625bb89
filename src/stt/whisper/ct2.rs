//! Reading a CTranslate2 (faster-whisper) `model.bin` and renaming its variables to the
//! HuggingFace Whisper parameter names the model code loads. Pure: bytes in, tensors out.
//!
//! Layout (binary version 6, little endian): `u32 version | str spec | u32 revision | u32 n`,
//! then per variable `str name | u8 rank | u32 dims[rank] | u8 dtype | u32 nbytes | bytes`, then
//! `u32 n_aliases | (str alias, str target)*`, where `str` is a u16 length counting a trailing
//! NUL. CTranslate2 stacks attention projections: self-attention q/k/v in `linear_0`, and the
//! decoder's cross-attention k/v in `attention/linear_1`; they are split here. Its k biases are
//! zeros where HuggingFace has none, and are checked and dropped.

use std::collections::BTreeMap;

/// Element types of CTranslate2 variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2Dtype {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl Ct2Dtype {
    fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::Bf16,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }
}

/// One variable: shape, element type and raw little-endian data.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub shape: Vec<usize>,
    pub dtype: Ct2Dtype,
    pub data: Vec<u8>,
}

impl RawTensor {
    /// Splits along the first dimension into `parts` equal tensors.
    fn split_rows(&self, parts: usize) -> Result<Vec<RawTensor>, Ct2Error> {
        let rows = *self
            .shape
            .first()
            .ok_or_else(|| Ct2Error::Shape("cannot split a scalar".into()))?;
        if rows % parts != 0 {
            return Err(Ct2Error::Shape(format!(
                "{rows} rows do not split in {parts}"
            )));
        }
        let chunk = self.data.len() / parts;
        let mut shape = self.shape.clone();
        shape[0] = rows / parts;
        Ok(self
            .data
            .chunks(chunk)
            .map(|data| RawTensor {
                shape: shape.clone(),
                dtype: self.dtype,
                data: data.to_vec(),
            })
            .collect())
    }

    /// True when every element is zero.
    fn is_zero(&self) -> bool {
        self.data.iter().all(|b| *b == 0)
    }

    /// The elements as f32 (f16, bf16 and f32 only).
    pub fn to_f32(&self) -> Result<Vec<f32>, Ct2Error> {
        match self.dtype {
            Ct2Dtype::F32 => Ok(self
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()),
            Ct2Dtype::F16 => Ok(self
                .data
                .chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect()),
            Ct2Dtype::Bf16 => Ok(self
                .data
                .chunks_exact(2)
                .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
                .collect()),
            other => Err(Ct2Error::Shape(format!("{other:?} is not a float type"))),
        }
    }
}

/// IEEE 754 half to single precision.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise.
            let mut e = 127 - 15 + 1;
            let mut f = frac;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// A parsed `model.bin`.
#[derive(Debug, Clone)]
pub struct Ct2Model {
    pub version: u32,
    pub spec: String,
    pub revision: u32,
    pub variables: BTreeMap<String, RawTensor>,
    pub aliases: BTreeMap<String, String>,
}

/// Why a model file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ct2Error {
    #[error("model.bin is truncated at byte {0}")]
    Truncated(usize),
    #[error("unsupported model.bin: {0}")]
    Unsupported(String),
    #[error("unexpected tensor shape: {0}")]
    Shape(String),
    #[error("model.bin lacks {0}")]
    Missing(String),
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Ct2Error> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or(Ct2Error::Truncated(self.pos))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, Ct2Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Ct2Error> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Ct2Error> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Result<String, Ct2Error> {
        let len = self.u16()? as usize;
        let raw = self.take(len)?;
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        String::from_utf8(raw.to_vec())
            .map_err(|_| Ct2Error::Unsupported("a name is not UTF-8".into()))
    }
}

/// Parses `model.bin`.
pub fn parse(bytes: &[u8]) -> Result<Ct2Model, Ct2Error> {
    let mut r = Reader { bytes, pos: 0 };
    let version = r.u32()?;
    if version != 6 {
        return Err(Ct2Error::Unsupported(format!(
            "binary version {version} (expected 6)"
        )));
    }
    let spec = r.string()?;
    let revision = r.u32()?;
    let count = r.u32()?;
    let mut variables = BTreeMap::new();
    for _ in 0..count {
        let name = r.string()?;
        let rank = r.u8()?;
        let shape = (0..rank)
            .map(|_| r.u32().map(|d| d as usize))
            .collect::<Result<Vec<_>, _>>()?;
        let dtype_id = r.u8()?;
        let dtype = Ct2Dtype::from_id(dtype_id)
            .ok_or_else(|| Ct2Error::Unsupported(format!("dtype {dtype_id} of {name}")))?;
        let nbytes = r.u32()? as usize;
        let expected = shape.iter().product::<usize>() * dtype.size();
        if nbytes != expected {
            return Err(Ct2Error::Shape(format!(
                "{name}: {nbytes} bytes for shape {shape:?} of {dtype:?}"
            )));
        }
        let data = r.take(nbytes)?.to_vec();
        variables.insert(name, RawTensor { shape, dtype, data });
    }
    let alias_count = r.u32()?;
    let mut aliases = BTreeMap::new();
    for _ in 0..alias_count {
        let alias = r.string()?;
        let target = r.string()?;
        aliases.insert(alias, target);
    }
    Ok(Ct2Model {
        version,
        spec,
        revision,
        variables,
        aliases,
    })
}

/// Renames (and splits) the variables of a CTranslate2 Whisper model to HuggingFace names
/// (`model.encoder.layers.0.self_attn.q_proj.weight`, …). Scalars and tied aliases are dropped.
pub fn to_hf_names(model: &Ct2Model) -> Result<BTreeMap<String, RawTensor>, Ct2Error> {
    if model.spec != "WhisperSpec" {
        return Err(Ct2Error::Unsupported(format!(
            "spec {} (expected WhisperSpec)",
            model.spec
        )));
    }
    let mut out = BTreeMap::new();
    for (name, tensor) in &model.variables {
        if tensor.shape.is_empty() {
            continue;
        }
        map_variable(name, tensor, &mut out)?;
    }
    for required in [
        "model.encoder.conv1.weight",
        "model.decoder.embed_tokens.weight",
        "model.decoder.layer_norm.weight",
    ] {
        if !out.contains_key(required) {
            return Err(Ct2Error::Missing(required.into()));
        }
    }
    Ok(out)
}

fn map_variable(
    name: &str,
    tensor: &RawTensor,
    out: &mut BTreeMap<String, RawTensor>,
) -> Result<(), Ct2Error> {
    let parts: Vec<&str> = name.split('/').collect();
    let (side, rest) = match parts.split_first() {
        Some((side @ (&"encoder" | &"decoder"), rest)) => (*side, rest),
        _ => return Ok(()),
    };
    let prefix = format!("model.{side}");
    fn leaf(p: &str) -> &str {
        match p {
            "gamma" => "weight",
            "beta" => "bias",
            other => other,
        }
    }
    let mut put = |key: String, t: RawTensor| {
        out.insert(key, t);
    };
    match rest {
        ["conv1" | "conv2", param] => put(format!("{prefix}.{}.{param}", rest[0]), tensor.clone()),
        ["position_encodings", "encodings"] => {
            put(format!("{prefix}.embed_positions.weight"), tensor.clone())
        }
        ["embeddings", "weight"] => put(format!("{prefix}.embed_tokens.weight"), tensor.clone()),
        ["layer_norm", p] => put(format!("{prefix}.layer_norm.{}", leaf(p)), tensor.clone()),
        [layer, block, sub @ ..] if layer.starts_with("layer_") => {
            let n = &layer["layer_".len()..];
            let base = format!("{prefix}.layers.{n}");
            match (*block, sub) {
                ("self_attention", ["linear_0", p]) => {
                    split_qkv(&format!("{base}.self_attn"), p, tensor, 3, out)?
                }
                ("self_attention", ["linear_1", p]) => {
                    put(format!("{base}.self_attn.out_proj.{p}"), tensor.clone())
                }
                ("self_attention", ["layer_norm", p]) => put(
                    format!("{base}.self_attn_layer_norm.{}", leaf(p)),
                    tensor.clone(),
                ),
                ("attention", ["linear_0", p]) => {
                    put(format!("{base}.encoder_attn.q_proj.{p}"), tensor.clone())
                }
                ("attention", ["linear_1", p]) => {
                    split_qkv(&format!("{base}.encoder_attn"), p, tensor, 2, out)?
                }
                ("attention", ["linear_2", p]) => {
                    put(format!("{base}.encoder_attn.out_proj.{p}"), tensor.clone())
                }
                ("attention", ["layer_norm", p]) => put(
                    format!("{base}.encoder_attn_layer_norm.{}", leaf(p)),
                    tensor.clone(),
                ),
                ("ffn", ["linear_0", p]) => put(format!("{base}.fc1.{p}"), tensor.clone()),
                ("ffn", ["linear_1", p]) => put(format!("{base}.fc2.{p}"), tensor.clone()),
                ("ffn", ["layer_norm", p]) => put(
                    format!("{base}.final_layer_norm.{}", leaf(p)),
                    tensor.clone(),
                ),
                _ => return Err(Ct2Error::Unsupported(format!("unknown variable {name}"))),
            }
        }
        _ => {}
    }
    Ok(())
}

/// Splits stacked projections: 3 parts → q, k, v; 2 parts → k, v. The k bias must be zero.
fn split_qkv(
    base: &str,
    param: &str,
    tensor: &RawTensor,
    parts: usize,
    out: &mut BTreeMap<String, RawTensor>,
) -> Result<(), Ct2Error> {
    let names: &[&str] = if parts == 3 {
        &["q_proj", "k_proj", "v_proj"]
    } else {
        &["k_proj", "v_proj"]
    };
    for (name, piece) in names.iter().zip(tensor.split_rows(parts)?) {
        if *name == "k_proj" && param == "bias" {
            if !piece.is_zero() {
                return Err(Ct2Error::Unsupported(format!(
                    "{base}.k_proj has a non-zero bias"
                )));
            }
            continue;
        }
        out.insert(format!("{base}.{name}.{param}"), piece);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
