//! Webhook signatures: ElevenLabs (`ElevenLabs-Signature: t=<unix>,v0=<hex HMAC-SHA256 of
//! "t.body">`) and Twilio (`X-Twilio-Signature`: base64 HMAC-SHA1 of the URL followed by the
//! POST parameters sorted by name, each as name then value). Compared in constant time.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};

use crate::crypto::constant_time_eq;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `v0` value ElevenLabs sends for `body` at time `t`.
pub fn elevenlabs_v0(secret: &str, t: &str, body: &[u8]) -> String {
    let Ok(mut mac) = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex(&mac.finalize().into_bytes())
}

/// Checks an `ElevenLabs-Signature` header against `body`; `now` in Unix seconds.
pub fn verify_elevenlabs(
    header: Option<&str>,
    secret: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: u64,
) -> Result<(), &'static str> {
    let header = header.ok_or("missing ElevenLabs-Signature")?;
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = Some(value.trim()),
            Some(("v0", value)) => signatures.push(value.trim()),
            _ => {}
        }
    }
    let t = t.ok_or("ElevenLabs-Signature without t=")?;
    let stamp: i64 = t
        .parse()
        .map_err(|_| "ElevenLabs-Signature t= is not a number")?;
    // i128: neither a far-past `t` nor a huge tolerance may overflow into "fresh".
    if i128::from(now) - i128::from(stamp) > i128::from(tolerance_secs) {
        return Err("ElevenLabs-Signature is too old");
    }
    let expected = elevenlabs_v0(secret, t, body);
    if signatures
        .iter()
        .any(|s| constant_time_eq(s.as_bytes(), expected.as_bytes()))
    {
        Ok(())
    } else {
        Err("ElevenLabs-Signature does not match")
    }
}

/// Twilio's signature of a POST to `url` with form `params`.
pub fn twilio(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let Ok(mut mac) = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(auth_token.as_bytes()) else {
        return String::new();
    };
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks a Vonage signed callback: `Authorization: Bearer <JWT>`, HS256 with the account's
/// signature secret, `iat` no older than `tolerance_secs` (nor in the future by more), and a
/// `payload_hash` claim equal to the SHA-256 hex of the body. `now` in Unix seconds.
pub fn verify_vonage(
    authorization: Option<&str>,
    secret: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: u64,
) -> Result<(), &'static str> {
    use sha2::Digest;
    let token = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or("missing Authorization: Bearer <signed JWT>")?;
    if token.len() > 8 * 1024 {
        return Err("the JWT is too long");
    }
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the JWT does not have three parts");
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let decode = |part: &str| -> Result<serde_json::Value, &'static str> {
        let bytes = b64.decode(part).map_err(|_| "the JWT is not base64url")?;
        serde_json::from_slice(&bytes).map_err(|_| "the JWT is not JSON")
    };
    if decode(header)?.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err("the JWT is not HS256");
    }
    let Ok(mut mac) = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) else {
        return Err("bad secret");
    };
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(claims.as_bytes());
    let expected = b64.encode(mac.finalize().into_bytes());
    if !constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        return Err("the JWT signature does not match");
    }
    let claims = decode(claims)?;
    let iat = claims
        .get("iat")
        .and_then(serde_json::Value::as_i64)
        .ok_or("the JWT has no iat")?;
    if (i128::from(now) - i128::from(iat)).unsigned_abs() > u128::from(tolerance_secs) {
        return Err("the JWT is too old");
    }
    let hash = claims
        .get("payload_hash")
        .and_then(|h| h.as_str())
        .ok_or("the JWT has no payload_hash")?;
    let actual = hex(&sha2::Sha256::digest(body));
    if !constant_time_eq(hash.to_ascii_lowercase().as_bytes(), actual.as_bytes()) {
        return Err("payload_hash does not match the body");
    }
    Ok(())
}

/// A Vonage-style signed JWT for `body` (tests and the load generator sign with it).
pub fn sign_vonage(secret: &str, body: &[u8], iat: i64) -> String {
    use sha2::Digest;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iat": iat,
        "jti": format!("{iat}-{}", body.len()),
        "payload_hash": hex(&sha2::Sha256::digest(body)),
    });
    let claims = b64.encode(claims.to_string());
    let Ok(mut mac) = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(claims.as_bytes());
    format!(
        "{header}.{claims}.{}",
        b64.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vonage_signed_callbacks() {
        let body = br#"{"recording_url":"https://api.nexmo.com/v1/files/x"}"#;
        let now = 1_700_000_000;
        let jwt = sign_vonage("sig-secret", body, now);
        let bearer = format!("Bearer {jwt}");
        assert!(verify_vonage(Some(&bearer), "sig-secret", body, now + 5, 300).is_ok());
        assert!(verify_vonage(Some(&bearer), "other", body, now, 300).is_err());
        assert!(verify_vonage(Some(&bearer), "sig-secret", b"{}", now, 300).is_err());
        assert!(verify_vonage(Some(&bearer), "sig-secret", body, now + 301, 300).is_err());
        assert!(verify_vonage(None, "sig-secret", body, now, 300).is_err());
        assert!(verify_vonage(Some("Bearer a.b"), "sig-secret", body, now, 300).is_err());
        let none_alg = format!(
            "Bearer {}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            jwt.split('.').nth(1).unwrap()
        );
        assert!(verify_vonage(Some(&none_alg), "sig-secret", body, now, 300).is_err());
        // An iat at the far end of i64 is "too old", not an overflow.
        let ancient = format!("Bearer {}", sign_vonage("sig-secret", body, i64::MIN));
        assert!(verify_vonage(Some(&ancient), "sig-secret", body, now, 300).is_err());
    }

    #[test]
    fn elevenlabs_header_checks() {
        let body = br#"{"a":1}"#;
        let v0 = elevenlabs_v0("whsec", "1700000000", body);
        // Python: hmac.new(b"whsec", b"1700000000." + body, sha256).hexdigest()
        assert_eq!(
            v0,
            "8ad37ba156048ae0e0a5533c75cdf26fee88b07f93cb57ee4c80adb053012032"
        );
        let header = format!("t=1700000000,v0={v0}");
        assert_eq!(
            verify_elevenlabs(Some(&header), "whsec", body, 1_700_000_100, 1800),
            Ok(())
        );
        assert!(verify_elevenlabs(Some(&header), "other", body, 1_700_000_100, 1800).is_err());
        assert_eq!(
            verify_elevenlabs(Some(&header), "whsec", body, 1_700_002_000, 1800),
            Err("ElevenLabs-Signature is too old")
        );
        assert!(verify_elevenlabs(None, "whsec", body, 0, 1800).is_err());
        assert!(verify_elevenlabs(Some("v0=abc"), "whsec", body, 0, 1800).is_err());
    }

    #[test]
    fn twilio_signature_matches_an_independent_implementation() {
        // Expected value computed with Python's hmac/hashlib/base64 over the documented
        // algorithm: URL, then each parameter name and value, sorted by name.
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            twilio(
                "12345",
                "https://example.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "vNe7KK2kJwCsxc9K3OLkkKB3qqI="
        );
    }
}
