//! The one policy every outbound request follows: recordings, `call.completed` webhooks and
//! OpenAI-compatible endpoints all go through [`EgressPolicy`].
//!
//! - **Schemes**: `https` only, unless `egress.allow_http` (tests, a private network).
//! - **Addresses**: the host is resolved and every address checked *before* connecting, by the
//!   resolver the HTTP client itself uses (no second lookup an attacker's DNS could answer
//!   differently). Loopback, private, link-local (cloud metadata at 169.254.169.254), CGNAT,
//!   multicast, unspecified and documentation ranges are refused unless `egress.allow_private`.
//! - **Redirects** are followed by hand, at most `egress.max_redirects`, each hop checked again;
//!   credentials go only to the first, allow-listed host and are dropped on any other.
//! - **Recordings** come only from allow-listed hosts: Twilio's and Vonage's API hosts for their
//!   calls, `egress.recording_hosts` for every tenant, and a tenant's own `recording_hosts`.
//! - **Caps**: an overall deadline per request, a byte cap on bodies, and a decoded-duration
//!   cap on recordings (`egress.max_recording_secs`).
//! - No proxy from the environment: the address check must see the real destination.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// `[egress]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressSettings {
    /// Allow plain `http://` (default: https only).
    pub allow_http: bool,
    /// Allow loopback, private, link-local and other non-public addresses (default: refused).
    pub allow_private: bool,
    /// Hosts Twilio recordings may be fetched from, comma-separated.
    pub twilio_recording_hosts: String,
    /// Hosts Vonage recordings may be fetched from, comma-separated.
    pub vonage_recording_hosts: String,
    /// Hosts any tenant's recordings may be fetched from, comma-separated (default: none).
    pub recording_hosts: String,
    /// Redirects followed per request.
    pub max_redirects: u32,
    /// Longest recording decoded, seconds.
    pub max_recording_secs: u64,
}

impl Default for EgressSettings {
    fn default() -> Self {
        Self {
            allow_http: false,
            allow_private: false,
            twilio_recording_hosts: "api.twilio.com".into(),
            vonage_recording_hosts:
                "api.nexmo.com,api-us.nexmo.com,api-eu.nexmo.com,api-ap.nexmo.com,api.vonage.com"
                    .into(),
            recording_hosts: String::new(),
            max_redirects: 3,
            max_recording_secs: 4 * 3600,
        }
    }
}

impl EgressSettings {
    /// Checks every host list; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, list) in [
            (
                "egress.twilio_recording_hosts",
                &self.twilio_recording_hosts,
            ),
            (
                "egress.vonage_recording_hosts",
                &self.vonage_recording_hosts,
            ),
            ("egress.recording_hosts", &self.recording_hosts),
        ] {
            for host in split(list) {
                validate_host_name(&host).map_err(|m| (key, m))?;
            }
        }
        if self.max_recording_secs == 0 {
            return Err(("egress.max_recording_secs", "must be greater than 0".into()));
        }
        Ok(())
    }
}

fn split(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// A host name for an allow-list: a DNS name or an IP literal, no scheme, port, path or
/// wildcard.
pub fn validate_host_name(host: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && (host.parse::<IpAddr>().is_ok()
            || host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a host name (no scheme, port, path or wildcard)",
            crate::text::bounded(host, 64)
        ))
    }
}

/// Why an outbound request was not made or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// The policy forbids it; the request was never sent.
    #[error("refused by the egress policy: {0}")]
    Refused(String),
    /// It was sent and failed.
    #[error("{0}")]
    Failed(String),
}

/// The carrier whose recording is fetched: picks its allow-listed hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingSource {
    Twilio,
    Vonage,
    /// Any other call: only the node's and the tenant's own hosts.
    Other,
}

/// The compiled `[egress]` settings.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    allow_http: bool,
    allow_private: bool,
    twilio_hosts: Vec<String>,
    vonage_hosts: Vec<String>,
    recording_hosts: Vec<String>,
    max_redirects: u32,
    /// Longest recording decoded.
    pub max_recording: Duration,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        Self::from_settings(&EgressSettings::default())
    }
}

/// A URL the policy has checked: scheme and host known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUrl {
    pub url: String,
    pub host: String,
}

impl EgressPolicy {
    /// The policy of these settings (validated at load).
    pub fn from_settings(settings: &EgressSettings) -> Self {
        Self {
            allow_http: settings.allow_http,
            allow_private: settings.allow_private,
            twilio_hosts: split(&settings.twilio_recording_hosts),
            vonage_hosts: split(&settings.vonage_recording_hosts),
            recording_hosts: split(&settings.recording_hosts),
            max_redirects: settings.max_redirects,
            max_recording: Duration::from_secs(settings.max_recording_secs),
        }
    }

    /// Checks scheme and host syntax (and, for an IP literal, the address).
    pub fn check_url(&self, url: &str) -> Result<CheckedUrl, EgressError> {
        let refused = |why: String| EgressError::Refused(why);
        let uri: ureq::http::Uri = url.parse().map_err(|_| refused("not a valid URL".into()))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.allow_http => {}
            Some("http") => return Err(refused("http:// is not allowed (https only)".into())),
            _ => return Err(refused("only https:// URLs are fetched".into())),
        }
        let host = uri
            .host()
            .ok_or_else(|| refused("the URL has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(refused("credentials in the URL are not allowed".into()));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.check_ip(ip)?;
        }
        Ok(CheckedUrl {
            url: url.to_string(),
            host,
        })
    }

    /// Refuses addresses that are not public, unless private ones are allowed.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), EgressError> {
        if self.allow_private || is_public(ip) {
            Ok(())
        } else {
            Err(EgressError::Refused(format!(
                "{ip} is not a public address"
            )))
        }
    }

    /// Checks that a recording URL names an allow-listed host for this carrier and tenant.
    pub fn check_recording_url(
        &self,
        url: &str,
        source: RecordingSource,
        tenant_hosts: &[String],
    ) -> Result<CheckedUrl, EgressError> {
        let checked = self.check_url(url)?;
        let carrier: &[String] = match source {
            RecordingSource::Twilio => &self.twilio_hosts,
            RecordingSource::Vonage => &self.vonage_hosts,
            RecordingSource::Other => &[],
        };
        let allowed = carrier
            .iter()
            .chain(&self.recording_hosts)
            .chain(tenant_hosts)
            .any(|h| h.eq_ignore_ascii_case(&checked.host));
        if !allowed {
            return Err(EgressError::Refused(format!(
                "recordings are not fetched from {}",
                crate::text::bounded(&checked.host, 64)
            )));
        }
        Ok(checked)
    }

    /// An HTTP client bound by this policy: checked addresses, no redirects of its own, no
    /// environment proxy, one overall deadline, non-2xx answers returned rather than raised.
    pub fn agent(&self, timeout: Duration) -> ureq::Agent {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .proxy(None)
            .https_only(!self.allow_http)
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                    .build(),
            )
            .build();
        ureq::Agent::with_parts(
            config,
            DefaultConnector::default(),
            PolicyResolver {
                inner: DefaultResolver::default(),
                allow_private: self.allow_private,
            },
        )
    }

    /// GETs `url` (already checked), following redirects by hand with each hop checked;
    /// `basic` credentials go only to the first host. At most `max_bytes` of body.
    pub fn get(
        &self,
        first: &CheckedUrl,
        basic: Option<(&str, &str)>,
        max_bytes: u64,
        timeout: Duration,
    ) -> Result<Vec<u8>, EgressError> {
        use base64::Engine as _;
        let agent = self.agent(timeout);
        let mut url = first.clone();
        for _ in 0..=self.max_redirects {
            let mut request = agent.get(&url.url);
            if let Some((user, password)) = basic.filter(|_| url.host == first.host) {
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                request = request.header("authorization", &format!("Basic {token}"));
            }
            let mut response = request.call().map_err(failed)?;
            let status = response.status().as_u16();
            if (300..400).contains(&status) {
                let location = response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        EgressError::Failed(format!("HTTP {status} without Location"))
                    })?;
                let next = resolve_location(&url.url, location)?;
                url = self.check_url(&next)?;
                continue;
            }
            if status != 200 {
                return Err(EgressError::Failed(format!("HTTP {status}")));
            }
            return response
                .body_mut()
                .with_config()
                .limit(max_bytes)
                .read_to_vec()
                .map_err(failed);
        }
        Err(EgressError::Refused(format!(
            "more than {} redirects",
            self.max_redirects
        )))
    }
}

fn failed(err: ureq::Error) -> EgressError {
    let text = err.to_string();
    if text.contains(REFUSED_ADDRESS) {
        EgressError::Refused(text)
    } else {
        EgressError::Failed(text)
    }
}

/// A `Location` header made absolute against the URL that answered it.
fn resolve_location(base: &str, location: &str) -> Result<String, EgressError> {
    if location.contains("://") {
        return Ok(location.to_string());
    }
    let uri: ureq::http::Uri = base
        .parse()
        .map_err(|_| EgressError::Refused("bad redirect base".into()))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(EgressError::Refused("bad redirect base".into()));
    };
    if let Some(rest) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Ok(format!("{scheme}://{authority}{location}"));
    }
    Err(EgressError::Refused(
        "relative redirects without a leading / are not followed".into(),
    ))
}

const REFUSED_ADDRESS: &str = "refused by the egress policy: no public address";

/// The client's resolver: the system's lookup, then only addresses the policy allows.
#[derive(Debug)]
struct PolicyResolver {
    inner: DefaultResolver,
    allow_private: bool,
}

impl Resolver for PolicyResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let resolved = self.inner.resolve(uri, config, timeout)?;
        let mut allowed = self.inner.empty();
        for addr in resolved.iter().filter(|a| a.port() != 0) {
            if self.allow_private || is_public(addr.ip()) {
                allowed.push(*addr);
            }
        }
        if allowed.is_empty() {
            let seen: Vec<String> = resolved.iter().map(SocketAddr::to_string).collect();
            return Err(ureq::Error::Io(std::io::Error::other(format!(
                "{REFUSED_ADDRESS} for {} ({})",
                uri.host().unwrap_or_default(),
                seen.join(", ")
            ))));
        }
        Ok(allowed)
    }
}

/// True for a globally routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || (first == 0x0064 && ip.segments()[1] == 0xff9b) // NAT64, may reach IPv4 private
        || first == 0x2002) // 6to4, embeds IPv4
}

#[cfg(test)]
mod tests;
