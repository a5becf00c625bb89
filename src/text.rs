//! Bounding what a stranger sent before it reaches a log line, a close reason or a label;
//! reading optional settings written as text; and word error rate.

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

/// Word error rate: the words of a transcript as Whisper's English normaliser would compare
/// them, and the word-level edit distance between two transcripts.
pub mod wer {
    const NUMBERS: [&str; 21] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
    ];

    /// Lower case, no punctuation, hyphens split, small numbers as digits, and a run of digits
    /// as one word per digit (so "four seven two nine" and "4729" compare equal).
    pub fn words(text: &str) -> Vec<String> {
        text.to_lowercase()
            .split(|c: char| c.is_whitespace() || c == '-')
            .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_string())
            .filter(|w| !w.is_empty())
            .map(|w| {
                NUMBERS
                    .iter()
                    .position(|n| *n == w)
                    .map_or(w, |i| i.to_string())
            })
            .flat_map(|w| {
                if w.len() > 1 && w.bytes().all(|b| b.is_ascii_digit()) {
                    w.chars().map(String::from).collect()
                } else {
                    vec![w]
                }
            })
            .collect()
    }

    /// Substitutions, insertions and deletions turning `reference` into `hypothesis`.
    pub fn word_errors(reference: &[String], hypothesis: &[String]) -> usize {
        let mut row: Vec<usize> = (0..=hypothesis.len()).collect();
        for (i, r) in reference.iter().enumerate() {
            let mut previous = row[0];
            row[0] = i + 1;
            for (j, h) in hypothesis.iter().enumerate() {
                let substitute = previous + usize::from(r != h);
                previous = row[j + 1];
                row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
            }
        }
        row[hypothesis.len()]
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn edits_are_counted_on_normalised_words() {
            assert_eq!(
                word_errors(&words("book a plumber"), &words("welcome Lumber")),
                3
            );
            assert_eq!(
                word_errors(&words("twelve Main Street."), &words("12 main street")),
                0
            );
            assert_eq!(word_errors(&words("a b c"), &words("a c")), 1);
            assert_eq!(
                word_errors(&words("number four seven two nine"), &words("number 4729.")),
                0
            );
            assert_eq!(word_errors(&words(""), &words("x y")), 2);
        }
    }
}
