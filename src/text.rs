//! Bounding what a stranger sent before it reaches a log line, a close reason or a label; and
//! reading optional settings written as text.

/// `text` cut to at most `max` bytes on a character boundary: for close reasons (at most 123
/// bytes on the wire) and log lines that quote what a client sent.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end.saturating_sub(3)])
}

/// Serde for an optional setting written as text (`#[serde(with = "crate::text::optional")]`):
/// an empty string is `None`; anything else must parse as the field's type (a UUID, an address)
/// once, at load, so the code that uses it never parses it again.
pub mod optional {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(
        value: &Option<T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.as_ref().map(T::to_string).unwrap_or_default())
    }

    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(deserializer)?;
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse()
            .map(Some)
            .map_err(|err| D::Error::custom(format!("{err} (got {:?})", super::bounded(text, 80))))
    }
}
