//! The URL guard: a URL carried in a notification is attacker-controlled
//! input (server-side request forgery), so it is fetched only when
//!
//! 1. its scheme is `https` (`http` only with `allow_http`);
//! 2. its host matches the channel's allow-list ([`HostPattern`]: exact, or
//!    `*.example.com` for subdomains);
//! 3. every address the host resolves to is public unicast: not private,
//!    loopback, link-local, unspecified, multicast, broadcast,
//!    documentation, shared (CGNAT) or otherwise reserved, for IPv4 and
//!    IPv6, with IPv4-mapped and NAT64 IPv6 judged by their embedded IPv4
//!    address ([`is_forbidden`]), unless `allow_private_addresses`.
//!
//! Step 3 runs inside the HTTP client's DNS resolver ([`GuardedResolver`]):
//! the addresses checked are the very addresses the client connects to, so
//! a name that resolves to a public address for the check and to 127.0.0.1
//! for the fetch (DNS rebinding) cannot slip through. An address literal in
//! the URL does not go through the resolver and is checked by
//! [`UrlGuard::check_url`] instead. The client uses no proxy (a proxy would
//! resolve the name itself) and follows no redirects on its own: the
//! fetcher follows them one by one and checks each target again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use url::{Host, Url};

use super::config::FetchGuardConfig;

/// One allow-list entry: `files.example.com` or `*.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this host (lower case; may be an IP literal).
    Exact(String),
    /// Any host ending in `.<suffix>` (not the suffix itself).
    Subdomains(String),
}

impl HostPattern {
    /// Parses a pattern; the error says why it is not one.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let lower = text.trim().to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, lower),
        };
        if name.is_empty() || name.contains('*') {
            return Err(format!("`{text}` is not a host pattern (write `files.example.com` or `*.example.com`)"));
        }
        let bracketed = if name.contains(':') { format!("[{name}]") } else { name.clone() };
        match Host::parse(&bracketed) {
            Ok(Host::Domain(_)) => {}
            Ok(_) if !wild => {}
            Ok(_) => return Err(format!("`{text}`: a wildcard cannot precede an IP address")),
            Err(_) => return Err(format!("`{text}` is not a host pattern")),
        }
        if wild && !name.contains('.') {
            return Err(format!("`{text}` is too broad: a wildcard needs at least two labels after it"));
        }
        Ok(if wild { HostPattern::Subdomains(name) } else { HostPattern::Exact(name) })
    }

    /// Whether `host` (as in a URL, lower case) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        match self {
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
            HostPattern::Subdomains(suffix) => {
                host.len() > suffix.len() + 1 && {
                    let (head, tail) = host.split_at(host.len() - suffix.len());
                    head.ends_with('.') && tail.eq_ignore_ascii_case(suffix)
                }
            }
        }
    }
}

/// Why a URL may not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// Not https (or http when allowed).
    #[error("the URL scheme `{0}` is not allowed (https only)")]
    Scheme(String),
    /// The URL has no host.
    #[error("the URL has no host")]
    NoHost,
    /// The URL carries credentials (`user:pass@`), which we never forward.
    #[error("the URL carries credentials")]
    Credentials,
    /// The host is not on the allow-list.
    #[error("the host `{0}` is not on the channel's allow-list")]
    HostNotAllowed(String),
    /// The host is, or resolves to, a private or special address.
    #[error("the host `{host}` resolves to a non-public address ({addr})")]
    ForbiddenAddress {
        /// The host.
        host: String,
        /// The offending address.
        addr: IpAddr,
    },
    /// The host did not resolve.
    #[error("the host `{host}` could not be resolved: {reason}")]
    Resolve {
        /// The host.
        host: String,
        /// The resolver's reason.
        reason: String,
    },
}

/// The compiled guard of one channel.
#[derive(Debug, Clone)]
pub struct UrlGuard {
    patterns: Arc<[HostPattern]>,
    allow_http: bool,
    allow_private: bool,
}

impl UrlGuard {
    /// Compiles the guard; invalid patterns were reported by
    /// `NotificationConfig::validate` and are skipped here (they match
    /// nothing, which is the safe side).
    pub fn new(config: &FetchGuardConfig) -> Self {
        UrlGuard {
            patterns: config.allowed_hosts.iter().filter_map(|p| HostPattern::parse(p).ok()).collect(),
            allow_http: config.allow_http,
            allow_private: config.allow_private_addresses,
        }
    }

    /// The checks that need no DNS: scheme, credentials, allow-list, and
    /// the address when the host is an IP literal.
    pub fn check_url(&self, url: &Url) -> Result<(), GuardError> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            other => return Err(GuardError::Scheme(other.to_string())),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(GuardError::Credentials);
        }
        let host = url.host().ok_or(GuardError::NoHost)?;
        let host_text = match &host {
            Host::Domain(d) => d.to_ascii_lowercase(),
            Host::Ipv4(a) => a.to_string(),
            Host::Ipv6(a) => a.to_string(),
        };
        if !self.patterns.iter().any(|p| p.matches(&host_text)) {
            return Err(GuardError::HostNotAllowed(host_text));
        }
        let literal = match host {
            Host::Domain(_) => None,
            Host::Ipv4(a) => Some(IpAddr::V4(a)),
            Host::Ipv6(a) => Some(IpAddr::V6(a)),
        };
        if let Some(addr) = literal {
            self.check_addr(&host_text, addr)?;
        }
        Ok(())
    }

    /// Whether `addr` (an address of `host`) may be connected to.
    pub fn check_addr(&self, host: &str, addr: IpAddr) -> Result<(), GuardError> {
        if !self.allow_private && is_forbidden(addr) {
            return Err(GuardError::ForbiddenAddress { host: host.to_string(), addr });
        }
        Ok(())
    }

    /// The DNS resolver for the fetch client: resolves with the system
    /// resolver and refuses the name if any address is forbidden.
    pub fn resolver(&self) -> GuardedResolver {
        GuardedResolver { guard: self.clone() }
    }
}

/// A reqwest resolver applying [`UrlGuard::check_addr`] to every address,
/// so the checked addresses are the connected ones.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    guard: UrlGuard,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| GuardError::Resolve { host: host.clone(), reason: e.to_string() })?
                .collect();
            if addrs.is_empty() {
                return Err(GuardError::Resolve { host, reason: "no addresses".into() }.into());
            }
            // All or nothing: a name with one private address among public
            // ones is refused, not filtered, since the partner's DNS should
            // never contain one.
            for a in &addrs {
                guard.check_addr(&host, a.ip())?;
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// True for every address that is not public unicast: see the module docs.
pub fn is_forbidden(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => is_forbidden_v4(a),
        IpAddr::V6(a) => is_forbidden_v6(a),
    }
}

fn is_forbidden_v4(a: Ipv4Addr) -> bool {
    let [o0, o1, o2, _] = a.octets();
    a.is_unspecified()
        || o0 == 0 // "this network" 0.0.0.0/8
        || a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || (o0 == 100 && (o1 & 0xC0) == 64) // shared address space (CGNAT) 100.64.0.0/10
        || (o0 == 192 && o1 == 0 && o2 == 0) // IETF protocol assignments 192.0.0.0/24
        || a.is_documentation()
        || (o0 == 198 && (o1 & 0xFE) == 18) // benchmarking 198.18.0.0/15
        || a.is_multicast()
        || o0 >= 240 // reserved 240.0.0.0/4 and broadcast
}

fn is_forbidden_v6(a: Ipv6Addr) -> bool {
    // Addresses carrying an IPv4 address are judged by it.
    if let Some(v4) = a.to_ipv4_mapped() {
        return is_forbidden_v4(v4);
    }
    let seg = a.segments();
    if seg[0] == 0x0064 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
        // NAT64 64:ff9b::/96
        let [_, _, _, _, _, _, hi, lo] = seg;
        return is_forbidden_v4(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8));
    }
    // Otherwise only global unicast 2000::/3 is allowed, minus the special
    // ranges inside it. This also refuses ::, ::1, IPv4-compatible ::/96,
    // fc00::/7, fe80::/10, fec0::/10 and ff00::/8.
    let global_unicast = (seg[0] & 0xE000) == 0x2000;
    let ietf_protocol = seg[0] == 0x2001 && seg[1] < 0x0200; // 2001::/23 (Teredo, ORCHID, benchmarking ...)
    let documentation = seg[0] == 0x2001 && seg[1] == 0x0db8; // 2001:db8::/32
    let six_to_four = seg[0] == 0x2002; // 2002::/16 (tunnels to arbitrary IPv4)
    let documentation2 = seg[0] == 0x3fff && seg[1] < 0x1000; // 3fff::/20
    !global_unicast || ietf_protocol || documentation || six_to_four || documentation2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(hosts: &[&str]) -> UrlGuard {
        UrlGuard::new(&FetchGuardConfig {
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            allow_http: false,
            allow_private_addresses: false,
        })
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn host_patterns_match_exactly_or_by_subdomain() {
        let exact = HostPattern::parse("Files.Example.com").unwrap();
        assert!(exact.matches("files.example.com"));
        assert!(exact.matches("files.example.com."));
        assert!(!exact.matches("evil-files.example.com"));
        assert!(!exact.matches("files.example.com.evil.net"));
        let wild = HostPattern::parse("*.example.com").unwrap();
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("evilexample.com"));
        assert!(!wild.matches("example.com.evil.net"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "*", "*.com", "a.*.com", "*.127.0.0.1", "exa mple.com", "*."] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(HostPattern::parse("::1").unwrap(), HostPattern::Exact("::1".into()));
    }

    #[test]
    fn scheme_credentials_and_allow_list_are_checked_before_any_dns() {
        let g = guard(&["*.partner.example"]);
        assert_eq!(g.check_url(&url("https://files.partner.example/b")), Ok(()));
        assert_eq!(g.check_url(&url("http://files.partner.example/b")), Err(GuardError::Scheme("http".into())));
        assert_eq!(g.check_url(&url("file:///etc/passwd")), Err(GuardError::Scheme("file".into())));
        assert_eq!(g.check_url(&url("https://u:p@files.partner.example/b")), Err(GuardError::Credentials));
        assert_eq!(
            g.check_url(&url("https://metadata.google.internal/")),
            Err(GuardError::HostNotAllowed("metadata.google.internal".into()))
        );
    }

    #[test]
    fn loopback_literals_are_refused_by_default() {
        let g = guard(&["127.0.0.1", "::1"]);
        assert!(matches!(g.check_url(&url("https://127.0.0.1/x")), Err(GuardError::ForbiddenAddress { .. })));
        assert!(matches!(g.check_url(&url("https://[::1]/x")), Err(GuardError::ForbiddenAddress { .. })));
        let open = UrlGuard::new(&FetchGuardConfig {
            allowed_hosts: vec!["127.0.0.1".into()],
            allow_http: true,
            allow_private_addresses: true,
        });
        assert_eq!(open.check_url(&url("http://127.0.0.1:8080/x")), Ok(()));
    }

    #[test]
    fn special_ipv4_addresses_are_forbidden() {
        for a in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.9",
            "198.18.0.1",
            "198.19.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(is_forbidden(a.parse().unwrap()), "{a} should be forbidden");
        }
        for a in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "198.20.0.1", "52.95.110.1"] {
            assert!(!is_forbidden(a.parse().unwrap()), "{a} should be allowed");
        }
    }

    #[test]
    fn special_ipv6_addresses_are_forbidden_including_mapped_ipv4() {
        for a in [
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "2002:7f00:1::1",
            "100::1",
            "3fff::1",
        ] {
            assert!(is_forbidden(a.parse().unwrap()), "{a} should be forbidden");
        }
        for a in ["2606:4700:4700::1111", "2a00:1450:4001::200e", "::ffff:8.8.8.8", "64:ff9b::808:808"] {
            assert!(!is_forbidden(a.parse().unwrap()), "{a} should be allowed");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_that_resolve_to_loopback() {
        use reqwest::dns::Resolve;
        let g = guard(&["localhost"]);
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = match g.resolver().resolve(name).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(e) => e,
        };
        let guard_err = err.downcast_ref::<GuardError>().expect("a GuardError");
        assert!(matches!(guard_err, GuardError::ForbiddenAddress { .. }), "{guard_err}");
    }
}
