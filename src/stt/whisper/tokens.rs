//! Whisper's token ids back to text: the vocabulary is GPT-2 byte-level BPE, where every byte
//! is written as a printable character; decoding maps those characters back to bytes.

use std::collections::HashMap;

/// End of text.
pub const EOT: u32 = 50_256;
/// Start of transcript.
pub const SOT: u32 = 50_257;
/// No timestamps (English-only models).
pub const NO_TIMESTAMPS: u32 = 50_362;
/// The space token, suppressed at the first step.
pub const SPACE: u32 = 220;

/// Token id → text piece.
pub struct Vocabulary {
    tokens: Vec<String>,
    byte_of: HashMap<char, u8>,
}

impl Vocabulary {
    /// From CTranslate2's `vocabulary.txt` (one token per line, in id order).
    pub fn from_lines(text: &str) -> Self {
        Self::from_tokens(text.lines().map(String::from).collect())
    }

    /// From HuggingFace's `tokenizer.json` (`model.vocab` plus `added_tokens`).
    pub fn from_tokenizer_json(json: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("tokenizer.json: {e}"))?;
        let vocab = value["model"]["vocab"]
            .as_object()
            .ok_or("tokenizer.json has no model.vocab")?;
        let mut pairs: Vec<(u64, String)> = vocab
            .iter()
            .filter_map(|(token, id)| id.as_u64().map(|id| (id, token.clone())))
            .collect();
        if let Some(added) = value["added_tokens"].as_array() {
            pairs.extend(
                added
                    .iter()
                    .filter_map(|t| Some((t["id"].as_u64()?, t["content"].as_str()?.to_string()))),
            );
        }
        let size = pairs
            .iter()
            .map(|(id, _)| *id as usize + 1)
            .max()
            .unwrap_or(0);
        let mut tokens = vec![String::new(); size];
        for (id, token) in pairs {
            tokens[id as usize] = token;
        }
        Ok(Self::from_tokens(tokens))
    }

    fn from_tokens(tokens: Vec<String>) -> Self {
        Self {
            tokens,
            byte_of: byte_decoder(),
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Text of ordinary tokens (ids below `EOT`); special tokens are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for id in ids.iter().filter(|id| **id < EOT) {
            if let Some(token) = self.tokens.get(*id as usize) {
                bytes.extend(token.chars().filter_map(|c| self.byte_of.get(&c).copied()));
            }
        }
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
}

/// GPT-2's `bytes_to_unicode`, inverted: printable bytes stand for themselves, the others were
/// shifted to U+0100 onwards in order.
fn byte_decoder() -> HashMap<char, u8> {
    let printable = |b: u8| {
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let mut map = HashMap::with_capacity(256);
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
        map.insert(c, b);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_byte_level_tokens_and_skips_specials() {
        let mut lines = vec![String::new(); 51_000];
        lines[10] = "Hello".into();
        lines[11] = "Ġworld".into(); // 'Ġ' is the space byte
        lines[12] = ".".into();
        lines[13] = "Ġcaf".into();
        lines[14] = "Ã©".into(); // é in UTF-8 is C3 A9
        let vocab = Vocabulary::from_lines(&lines.join("\n"));
        assert_eq!(
            vocab.decode(&[SOT, NO_TIMESTAMPS, 10, 11, 12, 13, 14, EOT]),
            "Hello world. café"
        );
    }

    #[test]
    fn reads_tokenizer_json() {
        let json = r#"{"model":{"vocab":{"Hi":0,"Ġthere":1}},"added_tokens":[{"id":2,"content":"<|endoftext|>"}]}"#;
        let vocab = Vocabulary::from_tokenizer_json(json).unwrap();
        assert_eq!(vocab.len(), 3);
        assert_eq!(vocab.decode(&[0, 1]), "Hi there");
    }
}
