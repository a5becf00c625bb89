//! The mock Deepgram's side of the v1 live wire format: which upgrade requests it admits and
//! the JSON it sends (`Results`, `SpeechStarted`, `Metadata`), shaped as Deepgram documents
//! them. Pure.

use serde_json::json;
use tokio_tungstenite::tungstenite::handshake::server::Request;
use tokio_tungstenite::tungstenite::http::StatusCode;

/// What the client asked for in its URL.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamParams {
    pub sample_rate: u32,
    pub interim: bool,
    pub endpoint_ms: u64,
    pub vad_events: bool,
    /// The first `tag` (the engine tags each stream with its call id).
    pub tag: Option<String>,
}

/// Checks the upgrade request: path, auth (`Token KEY`; any non-empty key without `key`),
/// audio format. `Err`: the HTTP status and why.
pub fn admit(request: &Request, key: Option<&str>) -> Result<StreamParams, (StatusCode, String)> {
    let uri = request.uri();
    if uri.path().trim_end_matches('/') != "/v1/listen" {
        return Err((
            StatusCode::NOT_FOUND,
            format!("no such path {}", uri.path()),
        ));
    }
    let auth = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let good = match (auth.strip_prefix("Token "), key) {
        (Some(given), Some(key)) => given == key,
        (Some(given), None) => !given.trim().is_empty(),
        (None, _) => false,
    };
    if !good {
        return Err((StatusCode::UNAUTHORIZED, "invalid credentials".into()));
    }
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(uri.query().unwrap_or_default()).unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if param("encoding").is_some_and(|e| e != "linear16") {
        return Err((StatusCode::BAD_REQUEST, "only linear16 is mocked".into()));
    }
    if param("channels").is_some_and(|c| c != "1") {
        return Err((StatusCode::BAD_REQUEST, "only one channel is mocked".into()));
    }
    let sample_rate = match param("sample_rate").map(str::parse::<u32>) {
        None => 16_000,
        Some(Ok(rate)) if (8_000..=48_000).contains(&rate) => rate,
        Some(_) => return Err((StatusCode::BAD_REQUEST, "bad sample_rate".into())),
    };
    Ok(StreamParams {
        sample_rate,
        interim: param("interim_results") == Some("true"),
        // Deepgram's own default is 10 ms; the engine always sends its setting.
        endpoint_ms: param("endpointing").map_or(10, |v| v.parse().unwrap_or(10)),
        vad_events: param("vad_events") == Some("true"),
        tag: param("tag").filter(|t| !t.is_empty()).map(String::from),
    })
}

/// A `Results` message: `transcript` over `[start_ms, end_ms]` of the stream's audio.
pub fn results(
    request_id: &str,
    transcript: &str,
    (start_ms, end_ms): (u64, u64),
    is_final: bool,
    speech_final: bool,
) -> String {
    let tokens: Vec<&str> = transcript.split_whitespace().collect();
    let step = end_ms.saturating_sub(start_ms) / tokens.len().max(1) as u64;
    let words: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            let from = start_ms + step * i as u64;
            let word: String = token
                .chars()
                .filter(|ch| ch.is_alphanumeric() || *ch == '\'')
                .collect();
            json!({"word": word.to_lowercase(), "start": secs(from), "end": secs(from + step),
                "confidence": 0.99, "punctuated_word": token})
        })
        .collect();
    json!({
        "type": "Results",
        "channel_index": [0, 1],
        "duration": secs(end_ms.saturating_sub(start_ms)),
        "start": secs(start_ms),
        "is_final": is_final,
        "speech_final": speech_final,
        "from_finalize": is_final && !speech_final,
        "channel": {"alternatives": [{"transcript": transcript, "confidence": 0.99, "words": words}]},
        "metadata": {"request_id": request_id, "model_info": {"name": "mock", "version": "1", "arch": "mock"}},
    })
    .to_string()
}

/// `SpeechStarted` (with `vad_events=true`).
pub fn speech_started(at_ms: u64) -> String {
    json!({"type": "SpeechStarted", "channel": [0, 1], "timestamp": secs(at_ms)}).to_string()
}

/// `Metadata`, sent before the close that answers `CloseStream`.
pub fn metadata(request_id: &str, stream_ms: u64) -> String {
    json!({
        "type": "Metadata",
        "transaction_key": "deprecated",
        "request_id": request_id,
        "created": chrono::Utc::now().to_rfc3339(),
        "duration": secs(stream_ms),
        "channels": 1,
    })
    .to_string()
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// An interim is the utterance unfinished: its words, lower case, without end punctuation.
pub fn interim_words(transcript: &str) -> String {
    transcript.trim_end_matches(['.', '?', '!']).to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stt::deepgram_normalize::{Normalised, V1Normalizer};
    use crate::stt::SttEvent;

    fn request(uri: &str, auth: &str) -> Request {
        let mut builder = Request::builder().uri(uri);
        if !auth.is_empty() {
            builder = builder.header("Authorization", auth);
        }
        builder.body(()).unwrap_or_default()
    }

    #[test]
    fn only_listen_with_a_token_and_linear16_is_admitted() {
        let ok = request(
            "/v1/listen?encoding=linear16&sample_rate=8000&channels=1&interim_results=true&endpointing=300",
            "Token k",
        );
        assert_eq!(
            admit(&ok, Some("k")),
            Ok(StreamParams {
                sample_rate: 8_000,
                interim: true,
                endpoint_ms: 300,
                vad_events: false,
                tag: None
            })
        );
        let tagged = request("/v1/listen?tag=abc&tag=other", "Token k");
        assert_eq!(admit(&tagged, None).map(|p| p.tag), Ok(Some("abc".into())));
        let status = |r: &Request, key| admit(r, key).err().map(|e| e.0.as_u16());
        assert_eq!(status(&ok, Some("other")), Some(401));
        assert_eq!(status(&request("/v1/listen", ""), None), Some(401));
        assert_eq!(status(&request("/v1/listen", "Bearer k"), None), Some(401));
        assert_eq!(status(&request("/v2/listen", "Token k"), None), Some(404));
        let mulaw = request("/v1/listen?encoding=mulaw", "Token k");
        assert_eq!(status(&mulaw, None), Some(400));
        let stereo = request("/v1/listen?channels=2", "Token k");
        assert_eq!(status(&stereo, None), Some(400));
    }

    #[test]
    fn the_engines_normaliser_reads_the_messages_as_turns() {
        let mut normaliser = V1Normalizer::new(10_000);
        let interim = results("r", &interim_words("Yes."), (200, 450), false, false);
        let partial = normaliser.on_message(&interim);
        assert!(
            matches!(&partial, Normalised::Events(e) if matches!(&e[..],
                [SttEvent::Partial { text, .. }] if text == "yes")),
            "{partial:?}"
        );
        let last = normaliser.on_message(&results("r", "Yes.", (200, 900), true, true));
        assert_eq!(
            last,
            Normalised::Events(vec![SttEvent::Final {
                text: "Yes.".into(),
                start_ms: Some(10_200),
                end_ms: Some(10_900),
                confidence: Some(0.99),
            }])
        );
        assert_eq!(
            normaliser.on_message(&metadata("r", 900)),
            Normalised::Events(Vec::new())
        );
        assert_eq!(
            normaliser.on_message(&speech_started(200)),
            Normalised::Events(Vec::new())
        );
    }
}
