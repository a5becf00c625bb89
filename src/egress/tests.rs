use super::*;

fn strict() -> EgressPolicy {
    EgressPolicy::default()
}

#[test]
fn non_public_addresses_are_refused() {
    for ip in [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
    ] {
        assert!(!is_public(ip.parse().unwrap()), "{ip} should not be public");
    }
    for ip in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"] {
        assert!(is_public(ip.parse().unwrap()), "{ip} should be public");
    }
}

#[test]
fn urls_need_https_and_a_public_literal() {
    let p = strict();
    assert!(p.check_url("https://api.twilio.com/x").is_ok());
    for bad in [
        "http://api.twilio.com/x",
        "file:///etc/passwd",
        "ftp://x/y",
        "https://127.0.0.1/x",
        "https://[::1]/x",
        "https://169.254.169.254/latest/meta-data",
        "https://user:pw@api.twilio.com/x",
        "not a url",
        "",
    ] {
        assert!(
            matches!(p.check_url(bad), Err(EgressError::Refused(_))),
            "{bad} should be refused"
        );
    }
}

#[test]
fn recordings_only_from_allow_listed_hosts() {
    let p = strict();
    let twilio = "https://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/RE1";
    assert!(p
        .check_recording_url(twilio, RecordingSource::Twilio, &[])
        .is_ok());
    assert!(p
        .check_recording_url(twilio, RecordingSource::Vonage, &[])
        .is_err());
    let own = "https://media.example.com/r.wav";
    assert!(p
        .check_recording_url(own, RecordingSource::Other, &[])
        .is_err());
    assert!(p
        .check_recording_url(own, RecordingSource::Other, &["media.example.com".into()])
        .is_ok());
    assert!(p
        .check_recording_url(
            "https://api.twilio.com.evil.example/x",
            RecordingSource::Twilio,
            &[]
        )
        .is_err());
}

#[test]
fn redirect_locations_resolve_against_their_base() {
    assert_eq!(
        resolve_location("https://a.example/x/y", "/z").unwrap(),
        "https://a.example/z"
    );
    assert_eq!(
        resolve_location("https://a.example/x", "//b.example/z").unwrap(),
        "https://b.example/z"
    );
    assert_eq!(
        resolve_location("https://a.example/x", "http://127.0.0.1/").unwrap(),
        "http://127.0.0.1/"
    );
    assert!(resolve_location("https://a.example/x", "z").is_err());
}

#[test]
fn host_names_for_allow_lists() {
    assert!(validate_host_name("api.twilio.com").is_ok());
    assert!(validate_host_name("127.0.0.1").is_ok());
    for bad in ["", "https://x", "x:443", "*.x.com", "x/y", "a..b"] {
        assert!(validate_host_name(bad).is_err(), "{bad}");
    }
}
