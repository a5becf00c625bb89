use super::*;

fn provider(api: DeepgramApi, settings: DeepgramSettings) -> DeepgramProvider {
    let settings = DeepgramSettings {
        api_key: Some(Secret::new("k")),
        ..settings
    };
    DeepgramProvider::new(settings, api, 10, true).unwrap()
}

#[test]
fn v1_url_carries_the_configured_parameters() {
    let url = provider(DeepgramApi::V1, DeepgramSettings::default()).url(16_000);
    assert!(
        url.starts_with(
            "wss://api.deepgram.com/v1/listen?encoding=linear16&sample_rate=16000&channels=1"
        ),
        "{url}"
    );
    for part in [
        "model=nova-3",
        "interim_results=true",
        "endpointing=300",
        "utterance_end_ms=1000",
        "vad_events=true",
        "smart_format=true",
    ] {
        assert!(url.contains(part), "{url} lacks {part}");
    }
    let off = DeepgramSettings {
        endpointing_ms: 0,
        interim_results: false,
        ..DeepgramSettings::default()
    };
    let url = provider(DeepgramApi::V1, off).url(8_000);
    assert!(
        url.contains("endpointing=false") && !url.contains("utterance_end_ms"),
        "{url}"
    );
}

#[test]
fn a_stream_is_tagged_with_its_call_id() {
    let call_id = uuid::Uuid::new_v4();
    let config = StreamConfig {
        call_id,
        sample_rate: 16_000,
        start_offset_ms: 0,
        session_index: 0,
        api_key: None,
    };
    let url = provider(DeepgramApi::V1, DeepgramSettings::default()).stream_url(&config);
    assert!(url.ends_with(&format!("&tag={call_id}")), "{url}");
}

#[test]
fn flux_url_uses_v2_and_only_set_thresholds() {
    let s = DeepgramSettings {
        base_url: "ws://127.0.0.1:9/".into(),
        eot_threshold: 0.8,
        eot_timeout_ms: 3000,
        ..DeepgramSettings::default()
    };
    let url = provider(DeepgramApi::Flux, s).url(16_000);
    assert!(url.starts_with("ws://127.0.0.1:9/v2/listen?"), "{url}");
    assert!(
        url.contains("model=flux-general-en")
            && url.contains("eot_threshold=0.8")
            && url.contains("eot_timeout_ms=3000")
    );
    assert!(!url.contains("eager_eot_threshold"));
}

#[test]
fn a_missing_key_or_bad_scheme_is_a_start_up_error() {
    assert!(DeepgramProvider::new(DeepgramSettings::default(), DeepgramApi::V1, 1, true).is_err());
    let http = DeepgramSettings {
        base_url: "https://x".into(),
        api_key: Some(Secret::new("k")),
        ..DeepgramSettings::default()
    };
    assert!(DeepgramProvider::new(http, DeepgramApi::V1, 1, true)
        .err()
        .is_some_and(|e| e.contains("ws://")));
}

#[tokio::test]
async fn a_tenant_choice_with_no_key_anywhere_fails_at_call_start_without_connecting() {
    // Port 9 (discard) is never contacted: the key check comes first.
    let settings = DeepgramSettings {
        base_url: "ws://127.0.0.1:9".into(),
        ..DeepgramSettings::default()
    };
    let provider = DeepgramProvider::new(settings, DeepgramApi::Flux, 1, false).unwrap();
    let config = StreamConfig {
        call_id: uuid::Uuid::nil(),
        sample_rate: 16_000,
        start_offset_ms: 0,
        session_index: 0,
        api_key: None,
    };
    match provider.open(config).await {
        Ok(_) => panic!("a stream opened with no key"),
        Err(failure) => {
            assert!(!failure.retryable);
            assert!(
                failure.message.contains("stt_api_key"),
                "{}",
                failure.message
            );
        }
    }
}
