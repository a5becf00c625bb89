//! The built-in summary and field extraction, used when no LLM is configured: an extractive
//! summary (the contact's most informative sentences) and dictionary/pattern extraction of
//! city, service category, preferred time and customer name, each with a confidence. Fields are
//! looked for in the summary first, then in the whole transcript. Nothing is invented: a field
//! not found is `null`.

use serde_json::{json, Value};

/// Per-tenant lists the extractor matches against (`tenants.postcall_config`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lists {
    pub cities: Vec<String>,
    pub service_categories: Vec<String>,
}

impl Lists {
    /// From a tenant's `postcall_config` (`{"cities": [...], "service_categories": [...]}`).
    pub fn from_config(config: Option<&Value>) -> Self {
        let list = |key: &str| {
            config
                .and_then(|c| c[key].as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        Self {
            cities: list("cities"),
            service_categories: list("service_categories"),
        }
    }
}

/// The extractor's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Extraction {
    pub summary: String,
    /// `{"city": {"value": "…", "confidence": 0.9}, …, "confidence": 0.8, "method": "builtin"}`.
    pub fields: Value,
}

const WEEKDAYS: [&str; 9] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "tomorrow",
    "today",
];
const PARTS_OF_DAY: [&str; 4] = ["morning", "afternoon", "evening", "night"];

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == ':'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn sentences(text: &str) -> Vec<String> {
    text.split(['.', '?', '!', '\n'])
        .map(str::trim)
        .filter(|s| s.split_whitespace().count() >= 3)
        .map(str::to_string)
        .collect()
}

/// The first entry of `list` found as whole words in `text` (case-insensitive), with how many
/// distinct entries were found.
fn find_in_list(text: &str, list: &[String]) -> Option<(String, usize)> {
    let haystack = format!(" {} ", words(text).join(" "));
    let found: Vec<&String> = list
        .iter()
        .filter(|entry| {
            let needle = words(entry).join(" ");
            !needle.is_empty() && haystack.contains(&format!(" {needle} "))
        })
        .collect();
    found.first().map(|f| ((*f).clone(), found.len()))
}

fn preferred_time(text: &str) -> Option<String> {
    let w = words(text);
    for (i, word) in w.iter().enumerate() {
        if WEEKDAYS.contains(&word.as_str()) {
            let mut phrase = vec![word.clone()];
            if let Some(next) = w.get(i + 1) {
                if PARTS_OF_DAY.contains(&next.as_str()) {
                    phrase.push(next.clone());
                } else if next == "at" {
                    if let Some(hour) = w.get(i + 2) {
                        phrase.push(format!("at {hour}"));
                    }
                }
            }
            return Some(phrase.join(" "));
        }
    }
    w.windows(2)
        .find(|p| p[0] == "at" && p[1].chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(|p| format!("at {}", p[1]))
}

/// Byte offset in `text` of the first occurrence of `needle` (ASCII), ignoring ASCII case.
///
/// Searched in `text` itself, never in a case-mapped copy: Unicode case mapping changes byte
/// lengths (`İ` is 2 bytes, its lower case `i̇` 3), so an offset found in a copy is not one of
/// `text`. An ASCII needle only matches ASCII bytes, so a match starts and ends on char
/// boundaries of `text`. No non-ASCII character lower-cases to the cues' ASCII letters without
/// a combining mark after it, so this finds exactly what `to_lowercase().find()` found.
fn find_ascii_ignore_case(text: &str, needle: &str) -> Option<usize> {
    debug_assert!(needle.is_ascii() && !needle.is_empty());
    text.as_bytes()
        .windows(needle.len())
        .position(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
}

fn customer_name(text: &str) -> Option<String> {
    for cue in ["my name is ", "this is ", "i am ", "i'm "] {
        if let Some(at) = find_ascii_ignore_case(text, cue) {
            // `get`, not indexing: a wrong offset can never panic here.
            let Some(rest) = text.get(at + cue.len()..) else {
                continue;
            };
            let name: Vec<&str> = rest
                .split(|c: char| !c.is_alphabetic() && c != '-')
                .take_while(|w| w.chars().next().is_some_and(char::is_uppercase))
                .take(3)
                .collect();
            if !name.is_empty() {
                return Some(name.join(" "));
            }
        }
    }
    None
}

fn score(sentence: &str, lists: &Lists) -> usize {
    let w = words(sentence);
    let mut score = w.len().min(12);
    score += 8 * usize::from(find_in_list(sentence, &lists.cities).is_some());
    score += 8 * usize::from(find_in_list(sentence, &lists.service_categories).is_some());
    score += 6 * usize::from(preferred_time(sentence).is_some());
    score += 6 * usize::from(customer_name(sentence).is_some());
    score
}

/// Summarises and extracts from a call. `contact_text`: what the contact said (the summary is
/// built from it); `transcript`: the whole call (the fallback for fields).
pub fn extract(contact_text: &str, transcript: &str, lists: &Lists) -> Extraction {
    let mut ranked: Vec<(usize, usize, String)> = sentences(contact_text)
        .into_iter()
        .enumerate()
        .map(|(i, s)| (score(&s, lists), i, s))
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut chosen: Vec<(usize, String)> =
        ranked.into_iter().take(2).map(|(_, i, s)| (i, s)).collect();
    chosen.sort();
    let summary = chosen
        .into_iter()
        .map(|(_, s)| format!("{s}."))
        .collect::<Vec<_>>()
        .join(" ");

    // Summary first (more confident), then the whole transcript.
    let field = |found_in_summary: Option<(String, f64)>,
                 found_in_transcript: Option<(String, f64)>| {
        match found_in_summary.or(found_in_transcript) {
            Some((value, confidence)) => json!({ "value": value, "confidence": confidence }),
            None => json!({ "value": null, "confidence": 0.0 }),
        }
    };
    let listed = |text: &str, list: &[String], base: f64| {
        find_in_list(text, list).map(|(v, n)| (v, if n > 1 { base / 2.0 } else { base }))
    };
    let city = field(
        listed(&summary, &lists.cities, 0.9),
        listed(transcript, &lists.cities, 0.7),
    );
    let service = field(
        listed(&summary, &lists.service_categories, 0.9),
        listed(transcript, &lists.service_categories, 0.7),
    );
    let time = field(
        preferred_time(&summary).map(|t| (t, 0.8)),
        preferred_time(transcript).map(|t| (t, 0.6)),
    );
    let name = field(
        customer_name(&summary).map(|n| (n, 0.8)),
        customer_name(transcript).map(|n| (n, 0.6)),
    );
    let found: Vec<f64> = [&city, &service, &time, &name]
        .iter()
        .filter(|f| !f["value"].is_null())
        .filter_map(|f| f["confidence"].as_f64())
        .collect();
    let confidence = if found.is_empty() {
        0.0
    } else {
        found.iter().sum::<f64>() / found.len() as f64
    };
    Extraction {
        summary,
        fields: json!({
            "city": city,
            "service_category": service,
            "preferred_time": time,
            "customer_name": name,
            "confidence": (confidence * 100.0).round() / 100.0,
            "method": "builtin",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists() -> Lists {
        Lists {
            cities: vec!["Boston".into(), "New York".into()],
            service_categories: vec!["plumbing".into(), "heating".into(), "electrical".into()],
        }
    }

    #[test]
    fn fields_from_a_call() {
        let contact = "Hello. My name is John Smith. The heating in my house in Boston stopped working. Could someone come on Tuesday afternoon? Thank you very much.";
        let e = extract(contact, contact, &lists());
        assert_eq!(e.fields["city"]["value"], "Boston");
        assert_eq!(e.fields["service_category"]["value"], "heating");
        assert_eq!(e.fields["preferred_time"]["value"], "tuesday afternoon");
        assert_eq!(e.fields["customer_name"]["value"], "John Smith");
        assert!(e.fields["confidence"].as_f64().unwrap() > 0.5);
        assert!(e.summary.contains("Boston"), "{}", e.summary);
        assert!(e.summary.split(". ").count() <= 2, "{}", e.summary);
    }

    #[test]
    fn nothing_found_is_null_never_invented() {
        let e = extract(
            "Okay then, goodbye now.",
            "Okay then, goodbye now.",
            &lists(),
        );
        for f in [
            "city",
            "service_category",
            "preferred_time",
            "customer_name",
        ] {
            assert!(e.fields[f]["value"].is_null(), "{f}");
        }
        assert_eq!(e.fields["confidence"], 0.0);
        let empty = extract("", "", &Lists::default());
        assert_eq!(empty.summary, "");
    }

    #[test]
    fn transcript_fallback_is_less_confident_and_lists_come_from_config() {
        let lists = Lists::from_config(Some(
            &json!({"cities": ["Denver"], "service_categories": ["roofing"]}),
        ));
        let e = extract(
            "Yes please do that.",
            "agent: where are you? contact: Denver, for roofing",
            &lists,
        );
        assert_eq!(e.fields["city"]["value"], "Denver");
        assert_eq!(e.fields["city"]["confidence"], 0.7);
    }

    #[test]
    fn the_hostile_name_from_issue_13_does_not_panic() {
        // Lower-casing `İ` (2 bytes) gives `i̇` (3 bytes): the cue's offset in a lower-cased
        // copy fell inside `日` of the original.
        let hostile = "İmy name is 日本";
        assert_eq!(customer_name(hostile), None, "CJK has no upper case");
        let e = extract(hostile, hostile, &lists());
        assert!(e.fields["customer_name"]["value"].is_null());
    }

    #[test]
    fn names_after_unicode_that_changes_length_when_lower_cased() {
        for (text, expected) in [
            // Turkish dotted capital I, many times: the old offsets drifted further each time.
            ("İİİİ this is Bob", Some("Bob")),
            (
                "İstanbul'dan arıyorum, my name is Ömer Çelik",
                Some("Ömer Çelik"),
            ),
            ("İ'm here. I'm Ayşe", Some("Ayşe")),
            // German sharp s (lower-cases to itself) and capital sharp s (to ß).
            ("Straße ẞ my name is Jürgen Groß", Some("Jürgen Groß")),
            // Kelvin sign (3 bytes) lower-cases to ASCII k (1 byte).
            ("\u{212A}\u{212A}\u{212A} MY NAME IS Kate", Some("Kate")),
            // Combining marks before the cue and in the name.
            (
                "e\u{301}\u{301}\u{301} My Name Is Zoe\u{308} Lee",
                Some("Zoe"),
            ),
            // Emoji (4 bytes each) and ZWJ sequences.
            ("👩‍👩‍👧‍👦😀 i'm Bob 😀", Some("Bob")),
            // Right-to-left text, and a right-to-left mark before the cue.
            ("שלום \u{200F}my name is Dana", Some("Dana")),
            ("مرحبا my name is أحمد", None),
            // Upper-case cue.
            ("THIS IS Ann-Marie O", Some("Ann-Marie O")),
            // The cue ends the text.
            ("İİ my name is ", None),
            ("İ", None),
            ("", None),
        ] {
            assert_eq!(customer_name(text).as_deref(), expected, "{text:?}");
            // And the whole extractor, on every field, in summary and transcript.
            let _ = extract(text, text, &lists());
        }
    }

    #[test]
    fn cue_search_ignores_ascii_case_only_and_stays_on_char_boundaries() {
        assert_eq!(
            find_ascii_ignore_case("İmy name is 日本", "my name is "),
            Some(2)
        );
        assert_eq!(find_ascii_ignore_case("xx I'M", "i'm"), Some(3));
        assert_eq!(find_ascii_ignore_case("ab", "abc"), None);
        // Kelvin sign is not an ASCII k.
        assert_eq!(find_ascii_ignore_case("\u{212A}", "k"), None);
        let text = "ẞİ\u{212A}日本😀 i am é";
        for cue in ["my name is ", "this is ", "i am ", "i'm "] {
            if let Some(at) = find_ascii_ignore_case(text, cue) {
                assert!(text.is_char_boundary(at) && text.is_char_boundary(at + cue.len()));
            }
        }
    }
}
