//! Which addresses an outbound call may reach (SSRF protection).
//!
//! The check runs on resolved addresses, not on names: a custom reqwest
//! DNS resolver drops every address that is not public, so a name that
//! resolves (or re-resolves, DNS rebinding) to `127.0.0.1` or to the cloud
//! metadata service is refused, and the connection is only ever made to an
//! address that passed the check. URLs whose host is an IP literal are not
//! resolved by reqwest, so [`check_url`] checks them before every request
//! and on every redirect hop.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// The call was refused because of where it would go. Permanent: the
/// config has to change (or the operator has to allow the network).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error(
        "destination address is private (loopback, private, link-local or otherwise non-public); set outbound.allow_private = true (SLUICE_OUTBOUND_ALLOW_PRIVATE=true) or list the network in outbound.allow_cidrs to allow it"
    )]
    PrivateAddress,
    #[error("only http and https URLs may be called")]
    Scheme,
    #[error("the URL must not carry a user or password")]
    Credentials,
    #[error("the URL has no host")]
    NoHost,
    #[error("too many redirects")]
    TooManyRedirects,
}

/// What may be reached.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    /// Every address is allowed.
    pub allow_private: bool,
    /// Non-public networks allowed anyway.
    pub allow_cidrs: Vec<IpNet>,
}

impl AddressPolicy {
    /// Whether a connection to `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow_private || is_public(ip) || self.allow_cidrs.iter().any(|n| n.contains(&ip))
    }
}

/// Whether `ip` is a globally routable unicast address. Everything else
/// (private, loopback, link-local, unique-local, multicast, unspecified,
/// shared, documentation, reserved, and IPv6 forms that embed such an IPv4
/// address) is refused by default.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network", includes 0.0.0.0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168)
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || s[0] & 0xfe00 == 0xfc00 // unique local fc00::/7
        || s[0] & 0xffc0 == 0xfe80 // link-local fe80::/10
        || s[0] & 0xffc0 == 0xfec0 // site-local (deprecated) fec0::/10
        || s[0] & 0xff00 == 0xff00 // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] == 0) // Teredo
        || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // discard-only
        || s[0] == 0) // other reserved forms under ::/16
}

/// The IPv4 address inside v4-mapped (`::ffff:a.b.c.d`), v4-compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`) forms.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !(s[6] == 0 && s[7] <= 1) {
        return Some(low());
    }
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(low());
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

/// Check a URL before it is requested (also every redirect hop): scheme,
/// no credentials, and an IP-literal host must be allowed. Names are
/// checked after resolution by [`GuardedResolver`].
pub fn check_url(url: &reqwest::Url, policy: &AddressPolicy) -> Result<(), Denied> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Denied::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Denied::Credentials);
    }
    match url.host() {
        None => Err(Denied::NoHost),
        Some(url::Host::Ipv4(ip)) if !policy.allows(IpAddr::V4(ip)) => Err(Denied::PrivateAddress),
        Some(url::Host::Ipv6(ip)) if !policy.allows(IpAddr::V6(ip)) => Err(Denied::PrivateAddress),
        Some(_) => Ok(()),
    }
}

/// A reqwest DNS resolver that resolves with the system resolver and keeps
/// only allowed addresses; a name with none left fails with
/// [`Denied::PrivateAddress`].
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub policy: Arc<AddressPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs = resolve_allowed(&host, 0, &policy).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Resolve `host` and keep the allowed addresses.
pub async fn resolve_allowed(
    host: &str,
    port: u16,
    policy: &AddressPolicy,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let all: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    let allowed: Vec<SocketAddr> = all
        .iter()
        .copied()
        .filter(|a| policy.allows(a.ip()))
        .collect();
    if allowed.is_empty() && !all.is_empty() {
        return Err(Box::new(Denied::PrivateAddress));
    }
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn non_public_ranges_are_refused() {
        for denied in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "::127.0.0.1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = denied.parse().unwrap();
            assert!(!is_public(ip), "{denied} must be refused");
            assert!(!AddressPolicy::default().allows(ip));
            let open = AddressPolicy {
                allow_private: true,
                ..AddressPolicy::default()
            };
            assert!(open.allows(ip));
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public} is public");
        }
    }

    #[test]
    fn allowed_networks_open_only_themselves() {
        let policy = AddressPolicy {
            allow_private: false,
            allow_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
        };
        assert!(policy.allows("127.0.0.1".parse().unwrap()));
        assert!(!policy.allows("127.0.0.2".parse().unwrap()));
        assert!(!policy.allows("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn urls_are_checked_before_resolution() {
        let policy = AddressPolicy::default();
        let check = |u: &str| check_url(&u.parse().unwrap(), &policy);
        assert_eq!(check("http://127.0.0.1/"), Err(Denied::PrivateAddress));
        assert_eq!(check("http://[::1]:80/"), Err(Denied::PrivateAddress));
        assert_eq!(
            check("http://[::ffff:127.0.0.1]/"),
            Err(Denied::PrivateAddress)
        );
        assert_eq!(check("http://0x7f000001/"), Err(Denied::PrivateAddress));
        assert_eq!(check("http://2130706433/"), Err(Denied::PrivateAddress));
        assert_eq!(check("ftp://example.com/"), Err(Denied::Scheme));
        assert_eq!(check("https://u:p@example.com/"), Err(Denied::Credentials));
        assert_eq!(check("https://example.com/x"), Ok(()));
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused() {
        let policy = AddressPolicy::default();
        let err = resolve_allowed("localhost", 80, &policy).await.unwrap_err();
        assert!(err.downcast_ref::<Denied>().is_some(), "{err}");
        let open = AddressPolicy {
            allow_private: true,
            ..AddressPolicy::default()
        };
        assert!(
            !resolve_allowed("localhost", 80, &open)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
