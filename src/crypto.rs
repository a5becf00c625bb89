//! Small cryptographic leaves shared by every way in and by the store: constant-time
//! comparison, token hashing, and the node key that seals tenant secrets at rest.
//!
//! Secrets the engine must use again (a Twilio auth token to verify a signature, a webhook
//! secret to sign, a Deepgram key to connect) are sealed with ChaCha20-Poly1305 (ring's AEAD)
//! under the node key and stored as `enc:v1:<base64(nonce ‖ ciphertext ‖ tag)>`. Tokens the
//! engine only needs to compare (media tokens, inbound webhook tokens, API tokens) are stored as
//! their SHA-256 and never kept in the clear.

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Shortest token (media, inbound webhook, API) a tenant may be given.
pub const MIN_TOKEN_LEN: usize = 16;

/// Prefix of a sealed value.
const SEALED_PREFIX: &str = "enc:v1:";

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// SHA-256 hex of a token: what the database keeps of tokens that are only compared.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Prefix of a token kept as its hash.
const HASHED_PREFIX: &str = "sha256:";

/// What a column of compared-only tokens holds: `sha256:<hex>`.
pub fn stored_token_hash(token: &str) -> String {
    format!("{HASHED_PREFIX}{}", token_hash(token))
}

/// True for a value written by [`stored_token_hash`].
pub fn is_hashed(stored: &str) -> bool {
    stored.starts_with(HASHED_PREFIX)
}

/// Checks a token a tenant is being given: long enough, printable, no spaces.
pub fn validate_token(what: &str, token: &str) -> Result<(), String> {
    if token.chars().count() < MIN_TOKEN_LEN {
        return Err(format!(
            "{what} must be at least {MIN_TOKEN_LEN} characters"
        ));
    }
    if token.len() > 256 || !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "{what} must be at most 256 printable ASCII characters without spaces"
        ));
    }
    Ok(())
}

/// `[security]`: the node key.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySettings {
    /// Base64 of 32 random bytes (`openssl rand -base64 32`) sealing tenant secrets at rest.
    /// Every node on one database needs the same key. Unset: the key in
    /// `DATA_DIR/node.key`, created on first start (fine for one node; set it explicitly for
    /// several).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_key: Option<crate::secret::Secret>,
}

/// The node key from `[security]`, else from `DATA_DIR/node.key` (created, mode 0600, when
/// missing).
pub fn resolve_node_key(
    settings: &SecuritySettings,
    data_dir: &std::path::Path,
) -> Result<NodeKey, String> {
    if let Some(key) = &settings.node_key {
        return NodeKey::from_base64(key.expose()).map_err(|e| format!("security.node_key: {e}"));
    }
    let path = data_dir.join("node.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => NodeKey::from_base64(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let key = NodeKey::generate_base64().map_err(|e| e.to_string())?;
            std::fs::create_dir_all(data_dir)
                .map_err(|e| format!("creating {}: {e}", data_dir.display()))?;
            write_private(&path, &key).map_err(|e| format!("writing {}: {e}", path.display()))?;
            tracing::info!(path = %path.display(), "created the node key that seals tenant secrets");
            NodeKey::from_base64(&key).map_err(|e| e.to_string())
        }
        Err(err) => Err(format!("reading {}: {err}", path.display())),
    }
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

/// Why a sealed value could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the node key must be 32 bytes, base64-encoded")]
    BadKey,
    #[error("a sealed secret is damaged or was sealed with another node key")]
    Unsealable,
    #[error("the system random source failed")]
    Random,
}

/// The node key: seals and opens tenant secrets. Every node sharing a database must have the
/// same key.
#[derive(Clone)]
pub struct NodeKey {
    key: std::sync::Arc<LessSafeKey>,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(***)")
    }
}

impl NodeKey {
    /// A key from its 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes).map_err(|_| SealError::BadKey)?;
        Ok(Self {
            key: std::sync::Arc::new(LessSafeKey::new(unbound)),
        })
    }

    /// A key from its base64 form (standard alphabet, padded or not).
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let text = text.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .map_err(|_| SealError::BadKey)?;
        if bytes.len() != 32 {
            return Err(SealError::BadKey);
        }
        Self::from_bytes(&bytes)
    }

    /// A fresh random key, base64-encoded.
    pub fn generate_base64() -> Result<String, SealError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SealError::Random)?;
        Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// Seals `plain` under a fresh random nonce.
    pub fn seal(&self, plain: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut data = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(SEALED_PREFIX),
                &mut data,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// Opens a value written by [`NodeKey::seal`]. A value without the sealed prefix is a
    /// secret stored before sealing existed and is returned as it is (the start-up pass
    /// [`is_sealed`] serves reseals those).
    pub fn open(&self, stored: &str) -> Result<String, SealError> {
        let Some(encoded) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_string());
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| SealError::Unsealable)?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Unsealable);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Unsealable)?;
        let mut data = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(SEALED_PREFIX), &mut data)
            .map_err(|_| SealError::Unsealable)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Unsealable)
    }
}

/// True for a value written by [`NodeKey::seal`].
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key() {
        let key = NodeKey::from_base64(&NodeKey::generate_base64().unwrap()).unwrap();
        let sealed = key.seal("twilio-auth-token").unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("twilio-auth-token"));
        assert_eq!(key.open(&sealed).unwrap(), "twilio-auth-token");
        // Fresh nonce each time.
        assert_ne!(sealed, key.seal("twilio-auth-token").unwrap());
        let other = NodeKey::from_base64(&NodeKey::generate_base64().unwrap()).unwrap();
        assert_eq!(other.open(&sealed), Err(SealError::Unsealable));
        let mut damaged = sealed.clone();
        damaged.pop();
        damaged.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(key.open(&damaged).is_err());
        assert_eq!(key.open("legacy-plain").unwrap(), "legacy-plain");
        assert_eq!(key.open("enc:v1:!!"), Err(SealError::Unsealable));
        assert_eq!(key.open("enc:v1:AAAA"), Err(SealError::Unsealable));
    }

    #[test]
    fn keys_must_be_32_bytes() {
        assert_eq!(
            NodeKey::from_base64("c2hvcnQ=").err(),
            Some(SealError::BadKey)
        );
        assert_eq!(
            NodeKey::from_base64("not base64!").err(),
            Some(SealError::BadKey)
        );
    }

    #[test]
    fn tokens_have_a_minimum_length() {
        assert!(validate_token("media token", "short").is_err());
        assert!(validate_token("media token", "0123456789abcdef").is_ok());
        assert!(validate_token("media token", "0123456789abcde f").is_err());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
