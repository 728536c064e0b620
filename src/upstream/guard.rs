//! Where an upstream may send berth: the addresses a redirect target or a token realm may lead to.
//!
//! A registry's answers name other hosts (a CDN in a `Location`, a token server in a challenge's
//! `realm`), and berth connects to them from inside the operator's network. An upstream that is
//! hostile or compromised could point berth at the loopback interface, the private network or a
//! cloud's link-local metadata service (169.254.169.254) and have it fetch from there. So, for a
//! public upstream, hosts other than the ones the operator configured (the upstream's own URL and
//! its `auth_realms`) may not be on loopback, private (RFC 1918, IPv6 ULA, shared 100.64/10),
//! link-local or unspecified addresses:
//! - a name that is such an address literally (or `localhost`) is refused before any connection
//!   ([`Guard::check_url`], used by the redirect loop and the realm check);
//! - a name that *resolves* to such addresses is refused by the client's resolver
//!   ([`GuardedResolver`]), so a DNS name cannot smuggle a private address past the first check,
//!   and the address checked is the address connected to. Its error carries [`Refused`], so the
//!   client tells a refusal ([`refused_by_resolver`]: answered as a bad upstream, never retried)
//!   from an unreachable host. Tested through the real client, with a DNS server of the test's own
//!   in a network namespace, by `tests/it/dns.rs`.
//!
//! `allow_private_redirects` decides: `true` allows such targets, `false` refuses them, and unset
//! allows them only when the upstream itself is on such an address (a registry on the local
//! network redirects to its local object store), which is known once its name has been resolved.
//!
//! Rule of dependency: a leaf under `upstream` (uses `url` and the resolver interface of
//! hyper-util).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use url::{Host, Url};

/// Whether `ip` is an address a public upstream must not lead berth to.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                // Shared address space (carrier-grade NAT), 100.64.0.0/10.
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                // Unique local fc00::/7, link-local fe80::/10.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// One upstream's address policy (shared by its client's resolver and its redirect loop).
#[derive(Debug)]
pub struct Guard {
    /// `allow_private_redirects`: `None` decides by the upstream's own address.
    allow: Option<bool>,
    /// Hosts the operator configured (the upstream's URL, its `auth_realms`), lowercase: always
    /// allowed, whatever they resolve to.
    trusted: Vec<String>,
    /// The upstream's own host, and whether it turned out to be on a private address.
    origin: String,
    origin_private: AtomicBool,
}

impl Guard {
    pub fn new(url: &Url, auth_realms: &[Url], allow: Option<bool>) -> Guard {
        let host_of = |u: &Url| u.host_str().unwrap_or_default().to_ascii_lowercase();
        let origin = host_of(url);
        let literal_private = match url.host() {
            Some(Host::Ipv4(ip)) => is_private(ip.into()),
            Some(Host::Ipv6(ip)) => is_private(ip.into()),
            Some(Host::Domain(d)) => is_localhost(d),
            None => false,
        };
        Guard {
            allow,
            trusted: std::iter::once(url)
                .chain(auth_realms)
                .map(host_of)
                .collect(),
            origin,
            origin_private: AtomicBool::new(literal_private),
        }
    }

    /// Whether targets on private addresses are allowed now.
    fn allows_private(&self) -> bool {
        self.allow
            .unwrap_or_else(|| self.origin_private.load(Ordering::Relaxed))
    }

    fn trusts(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.trusted.iter().any(|t| {
            t.trim_start_matches('[')
                .trim_end_matches(']')
                .eq_ignore_ascii_case(host)
        })
    }

    /// Checks a URL an upstream named (redirect target, token realm) before connecting: `Err`
    /// says why it is refused. Names are checked again, resolved, by [`GuardedResolver`].
    pub fn check_url(&self, url: &Url) -> Result<(), String> {
        let Some(host) = url.host_str() else {
            return Err("no host".into());
        };
        if self.trusts(host) || self.allows_private() {
            return Ok(());
        }
        let private = match url.host() {
            Some(Host::Ipv4(ip)) => is_private(ip.into()),
            Some(Host::Ipv6(ip)) => is_private(ip.into()),
            Some(Host::Domain(d)) => is_localhost(d),
            None => false,
        };
        if private {
            return Err(format!(
                "{host} is a loopback, private or link-local address (allow_private_redirects)"
            ));
        }
        Ok(())
    }

    /// Filters what `name` resolved to: everything for a configured host (recording whether the
    /// upstream itself is private), only public addresses for any other unless allowed. `Err` when
    /// nothing is left.
    pub fn filter(&self, name: &str, addrs: Vec<SocketAddr>) -> io::Result<Vec<SocketAddr>> {
        if self.trusts(name) {
            if name.eq_ignore_ascii_case(&self.origin) && addrs.iter().any(|a| is_private(a.ip())) {
                self.origin_private.store(true, Ordering::Relaxed);
            }
            return Ok(addrs);
        }
        if self.allows_private() {
            return Ok(addrs);
        }
        let resolved = addrs.len();
        let public: Vec<SocketAddr> = addrs.into_iter().filter(|a| !is_private(a.ip())).collect();
        if public.is_empty() && resolved > 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                Refused(format!(
                    "{name} resolves only to loopback, private or link-local addresses: refused (allow_private_redirects)"
                )),
            ));
        }
        Ok(public)
    }
}

/// What [`Guard::filter`] refused, inside the `io::Error` the resolver returns.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

/// Whether `e` (an error of the client, with its chain of causes) is the resolver's refusal.
pub fn refused_by_resolver(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        // An `io::Error`'s `source()` skips the error it wraps: look inside.
        let inner = c
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|i| i.is::<Refused>());
        if inner || c.is::<Refused>() {
            return true;
        }
        cause = c.source();
    }
    false
}

fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// The resolver of an upstream's client: the system's (`getaddrinfo`, through tokio), then
/// [`Guard::filter`].
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    guard: Arc<Guard>,
}

impl GuardedResolver {
    pub fn new(guard: Arc<Guard>) -> Self {
        GuardedResolver { guard }
    }
}

type Resolving = Pin<Box<dyn Future<Output = io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            // The port is set by the connector afterwards.
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(guard.filter(&host, addrs)?.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "100.127.255.255",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fc12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "2600::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    fn url(s: &str) -> Url {
        s.parse().unwrap()
    }

    #[test]
    fn a_public_upstream_cannot_send_berth_inside() {
        let g = Guard::new(
            &url("https://registry-1.docker.io"),
            &[url("https://auth.docker.io/token")],
            None,
        );
        for ok in [
            "https://production.cloudflare.docker.com/x",
            "https://auth.docker.io/token",
            "https://registry-1.docker.io:8443/v2/",
            "https://8.8.8.8/x",
        ] {
            assert_eq!(g.check_url(&url(ok)), Ok(()), "{ok}");
        }
        for bad in [
            "http://127.0.0.1:9090/metrics",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/x",
            "http://[fe80::1]/x",
            "http://10.0.0.5/x",
            "http://localhost:5000/x",
            "http://admin.localhost./x",
            "http://[::ffff:127.0.0.1]/x",
        ] {
            assert!(g.check_url(&url(bad)).is_err(), "{bad}");
        }
        // Names are filtered once resolved.
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let public: SocketAddr = "93.184.216.34:0".parse().unwrap();
        let refused = g.filter("cdn.example", vec![lo]).unwrap_err();
        assert!(refused_by_resolver(&refused));
        assert!(!refused_by_resolver(&io::Error::new(
            io::ErrorKind::PermissionDenied,
            "denied by something else"
        )));
        assert_eq!(
            g.filter("cdn.example", vec![lo, public]).unwrap(),
            vec![public]
        );
        assert!(g.filter("cdn.example", vec![]).unwrap().is_empty());
        // Configured hosts resolve as they do (split-horizon DNS), and then the upstream counts as
        // private: its redirects to private addresses are allowed from then on.
        assert_eq!(g.filter("auth.docker.io", vec![lo]).unwrap(), vec![lo]);
        assert!(g.check_url(&url("http://10.0.0.5/x")).is_err());
        assert_eq!(
            g.filter("registry-1.docker.io", vec![lo]).unwrap(),
            vec![lo]
        );
        assert_eq!(g.check_url(&url("http://10.0.0.5/x")), Ok(()));
    }

    #[test]
    fn the_setting_decides_over_the_upstreams_own_address() {
        let local = url("http://127.0.0.1:5000");
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        // Unset: a registry on the local network may use its local object store.
        let g = Guard::new(&local, &[], None);
        assert_eq!(g.check_url(&url("http://127.0.0.1:9000/bucket")), Ok(()));
        assert_eq!(g.filter("minio.internal", vec![lo]).unwrap(), vec![lo]);
        // false: only the configured hosts, even for a local upstream.
        let g = Guard::new(&local, &[url("http://127.0.0.2:5001/token")], Some(false));
        assert_eq!(g.check_url(&url("http://127.0.0.1:5000/v2/")), Ok(()));
        assert_eq!(g.check_url(&url("http://127.0.0.2:5001/token")), Ok(()));
        assert!(g.check_url(&url("http://127.0.0.3:9000/bucket")).is_err());
        assert!(g.filter("minio.internal", vec![lo]).is_err());
        // true: anything.
        let g = Guard::new(&url("https://registry.example"), &[], Some(true));
        assert_eq!(g.check_url(&url("http://169.254.169.254/")), Ok(()));
        assert_eq!(g.filter("x", vec![lo]).unwrap(), vec![lo]);
    }
}
