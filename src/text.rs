//! Bounding what a stranger sent before it reaches a log line, a close reason or a label.

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
