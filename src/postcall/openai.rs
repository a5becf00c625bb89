//! OpenAI-compatible endpoints a tenant may configure instead of the local engines:
//! `POST {base}/v1/audio/transcriptions` (multipart: `file`, `model`) and
//! `POST {base}/v1/chat/completions` with a JSON-schema response format for the summary and
//! fields. Blocking (ureq): call from blocking tasks.

use std::time::Duration;

use serde_json::{json, Value};

use super::http_agent as agent;

/// One endpoint: base URL, key, model (`tenants.postcall_config.offline_stt` / `.llm`).
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
}

impl Endpoint {
    /// From `{"url": "...", "api_key": "...", "model": "..."}`.
    pub fn from_config(value: &Value, default_model: &str) -> Option<Self> {
        let url = value["url"].as_str()?.trim_end_matches('/').to_string();
        if url.is_empty() {
            return None;
        }
        Some(Self {
            base_url: url,
            api_key: value["api_key"].as_str().map(str::to_string),
            model: value["model"].as_str().unwrap_or(default_model).to_string(),
        })
    }

    fn url(&self, path: &str) -> String {
        // Accept a base with or without the /v1 suffix.
        let base = self.base_url.trim_end_matches("/v1");
        format!("{base}/v1/{path}")
    }
}

/// Transcribes a recording file (sent as it was downloaded).
pub fn transcribe(
    egress: &crate::egress::EgressPolicy,
    endpoint: &Endpoint,
    audio: &[u8],
    filename: &str,
    timeout: Duration,
) -> Result<String, String> {
    let boundary = format!("callengine{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::with_capacity(audio.len() + 512);
    let mut field = |name: &str, value: &str| {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    };
    field("model", &endpoint.model);
    field("response_format", "json");
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(audio);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let mut request = agent(egress, timeout)
        .post(endpoint.url("audio/transcriptions"))
        .header(
            "content-type",
            &format!("multipart/form-data; boundary={boundary}"),
        );
    if let Some(key) = &endpoint.api_key {
        request = request.header("authorization", &format!("Bearer {key}"));
    }
    let mut response = request
        .send(&body[..])
        .map_err(|e| format!("transcription endpoint unreachable: {e}"))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(10 * 1024 * 1024)
        .read_to_string()
        .map_err(|e| format!("transcription endpoint: {e}"))?;
    if !(200..300).contains(&status) {
        return Err(format!(
            "transcription endpoint answered HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        ));
    }
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| format!("transcription endpoint returned invalid JSON: {e}"))?;
    value["text"]
        .as_str()
        .map(|t| t.trim().to_string())
        .ok_or_else(|| "transcription endpoint returned no text".into())
}

/// The JSON schema the chat model must answer with.
pub fn extraction_schema() -> Value {
    let nullable = json!({ "type": ["string", "null"] });
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["summary", "city", "service_category", "preferred_time", "customer_name", "confidence"],
        "properties": {
            "summary": { "type": "string" },
            "city": nullable, "service_category": nullable,
            "preferred_time": nullable, "customer_name": nullable,
            "confidence": { "type": "number", "minimum": 0, "maximum": 1 }
        }
    })
}

/// Checks a model answer against the schema; returns `(summary, fields)` in the engine's shape.
pub fn validate(content: &str) -> Result<(String, Value), String> {
    let value: Value = serde_json::from_str(content)
        .map_err(|e| format!("the model's answer is not JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or("the model's answer is not an object")?;
    let summary = object
        .get("summary")
        .and_then(Value::as_str)
        .ok_or("the model's answer has no summary string")?
        .to_string();
    let confidence = object
        .get("confidence")
        .and_then(Value::as_f64)
        .filter(|c| (0.0..=1.0).contains(c))
        .ok_or("the model's confidence is not a number from 0 to 1")?;
    let mut fields = serde_json::Map::new();
    for name in [
        "city",
        "service_category",
        "preferred_time",
        "customer_name",
    ] {
        let v = match object.get(name) {
            Some(Value::String(s)) if !s.trim().is_empty() => Value::String(s.trim().to_string()),
            Some(Value::Null) | Some(Value::String(_)) => Value::Null,
            None => return Err(format!("the model's answer has no {name}")),
            Some(_) => return Err(format!("the model's {name} is not a string or null")),
        };
        let c = if v.is_null() { 0.0 } else { confidence };
        fields.insert(name.into(), json!({ "value": v, "confidence": c }));
    }
    fields.insert("confidence".into(), json!(confidence));
    fields.insert("method".into(), json!("llm"));
    Ok((summary, Value::Object(fields)))
}

/// Asks the chat model for the summary and fields, retrying (up to `attempts`) while its
/// answer does not validate.
pub fn summarise(
    egress: &crate::egress::EgressPolicy,
    endpoint: &Endpoint,
    transcript: &str,
    attempts: usize,
    timeout: Duration,
) -> Result<(String, Value), String> {
    let request = json!({
        "model": endpoint.model,
        "temperature": 0,
        "messages": [
            { "role": "system", "content": "You read phone-call transcripts for a home-services business. Answer with JSON only: a two-sentence summary of what the caller wants, and the caller's city, service category, preferred time and name as stated in the call (null when not stated), and your confidence from 0 to 1." },
            { "role": "user", "content": transcript }
        ],
        "response_format": {
            "type": "json_schema",
            "json_schema": { "name": "call_extraction", "strict": true, "schema": extraction_schema() }
        }
    });
    let mut last = String::new();
    for _ in 0..attempts.max(1) {
        let mut call = agent(egress, timeout)
            .post(endpoint.url("chat/completions"))
            .header("content-type", "application/json");
        if let Some(key) = &endpoint.api_key {
            call = call.header("authorization", &format!("Bearer {key}"));
        }
        let mut response = call
            .send(request.to_string().as_bytes())
            .map_err(|e| format!("chat endpoint unreachable: {e}"))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(1024 * 1024)
            .read_to_string()
            .map_err(|e| format!("chat endpoint: {e}"))?;
        if !(200..300).contains(&status) {
            return Err(format!("chat endpoint answered HTTP {status}"));
        }
        let content = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_default();
        match validate(&content) {
            Ok(result) => return Ok(result),
            Err(reason) => {
                tracing::warn!(%reason, "chat model answered malformed JSON; asking again");
                last = reason;
            }
        }
    }
    Err(format!("the chat model's answers did not validate: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_of_model_answers() {
        let (summary, fields) = validate(
            r#"{"summary":"Wants heating fixed.","city":"Boston","service_category":"heating","preferred_time":null,"customer_name":"Ann","confidence":0.8}"#,
        )
        .unwrap();
        assert_eq!(summary, "Wants heating fixed.");
        assert_eq!(fields["city"]["value"], "Boston");
        assert_eq!(fields["preferred_time"]["value"], Value::Null);
        assert_eq!(fields["method"], "llm");
        for bad in [
            "not json",
            "[]",
            r#"{"city":"x","service_category":null,"preferred_time":null,"customer_name":null,"confidence":0.5}"#,
            r#"{"summary":"s","city":3,"service_category":null,"preferred_time":null,"customer_name":null,"confidence":0.5}"#,
            r#"{"summary":"s","city":null,"service_category":null,"preferred_time":null,"customer_name":null,"confidence":7}"#,
            r#"{"summary":"s","service_category":null,"preferred_time":null,"customer_name":null,"confidence":0.5}"#,
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoint_from_config() {
        let e =
            Endpoint::from_config(&json!({"url": "http://h:1/v1/", "model": "m"}), "d").unwrap();
        assert_eq!(e.url("chat/completions"), "http://h:1/v1/chat/completions");
        assert!(Endpoint::from_config(&json!({}), "d").is_none());
    }
}
