//! How replicas prove themselves to each other: an HMAC of the request with the cluster secret.
//!
//! A peer request carries `Authorization: Berth-Peer <unix seconds> <hex HMAC-SHA256>` over
//! `berth-peer-v1 \n METHOD \n path-and-query \n seconds`, keyed with the `[cluster]` secret. The
//! receiver recomputes it and compares in constant time (`ring::hmac::verify`), and refuses a
//! timestamp more than [`MAX_SKEW`] away from its own clock.
//!
//! Why an HMAC rather than the secret itself in the header (`Berth-Peer <secret>`): peers often
//! talk plain HTTP inside a cluster network, and a secret sent in clear is given to anyone who
//! can read one request, for good: they could then make any peer request, forever. An HMAC gives
//! a reader one request, replayable for [`MAX_SKEW`], of the same path: peer requests only read
//! content (a blob by digest), so a replay fetches what the reader already saw. The cost is a
//! clock shared within a minute, which NTP gives every node, and one HMAC per peer request.
//! Neither scheme hides the content: use `https://` peers for that.
//!
//! The fleet (`fleet`) reuses the scheme with its own `Authorization` scheme and domain string
//! ([`PeerKey::for_protocol`]): one way of proving, never one proof for two protocols.
//!
//! Rule of dependency: a leaf (ring, http header types, `config::Secret`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use ring::hmac;

use crate::config::Secret;

/// The `Authorization` scheme of peer requests.
pub const SCHEME: &str = "Berth-Peer";

/// How far a request's timestamp may be from the receiver's clock, either way.
pub const MAX_SKEW: Duration = Duration::from_secs(60);

/// Why a request's proof was refused (the `reason` label of `berth_peer_auth_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Berth-Peer ...` header.
    Missing,
    /// The header is not `Berth-Peer <seconds> <hex>`.
    Malformed,
    /// The timestamp is more than [`MAX_SKEW`] away.
    Expired,
    /// The HMAC does not match: another secret, or another request.
    BadProof,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Expired => "expired",
            Refusal::BadProof => "bad_proof",
        }
    }

    pub const ALL: [Refusal; 4] = [
        Refusal::Missing,
        Refusal::Malformed,
        Refusal::Expired,
        Refusal::BadProof,
    ];
}

/// The domain string of the cluster's proofs: the first line of every signed message.
pub const DOMAIN: &str = "berth-peer-v1";

/// A shared secret as an HMAC key, for one protocol: the cluster's ([`PeerKey::new`]) or another
/// that reuses the scheme under its own `Authorization` scheme and domain string
/// ([`PeerKey::for_protocol`], the fleet's), so a proof made for one never passes as a proof of
/// the other, even where an operator gave both the same secret.
pub struct PeerKey {
    key: hmac::Key,
    scheme: &'static str,
    domain: &'static str,
}

impl PeerKey {
    /// The cluster's key: `Berth-Peer`, `berth-peer-v1`.
    pub fn new(secret: &Secret) -> PeerKey {
        PeerKey::for_protocol(secret, SCHEME, DOMAIN)
    }

    /// A key for another protocol with this scheme: its `Authorization` scheme and the domain
    /// string its messages start with.
    pub fn for_protocol(secret: &Secret, scheme: &'static str, domain: &'static str) -> PeerKey {
        PeerKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()),
            scheme,
            domain,
        }
    }

    /// The `Authorization` value for a request, signed at `now` (seconds since the epoch).
    pub fn sign(&self, method: &str, path_and_query: &str, now: u64) -> HeaderValue {
        let tag = hmac::sign(&self.key, &self.message(method, path_and_query, now));
        HeaderValue::from_str(&format!(
            "{} {now} {}",
            self.scheme,
            hex::encode(tag.as_ref())
        ))
        .expect("digits and hex are a valid header value")
    }

    /// Checks a request's `Authorization` value at `now` (seconds since the epoch).
    pub fn verify(
        &self,
        method: &str,
        path_and_query: &str,
        authorization: Option<&HeaderValue>,
        now: u64,
    ) -> Result<(), Refusal> {
        let value = authorization.ok_or(Refusal::Missing)?;
        let value = value.to_str().map_err(|_| Refusal::Malformed)?;
        let mut parts = value.split_ascii_whitespace();
        match parts.next() {
            Some(s) if s.eq_ignore_ascii_case(self.scheme) => {}
            // Another scheme (a client's Basic login): no peer proof at all.
            _ => return Err(Refusal::Missing),
        }
        let (Some(ts), Some(mac), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Refusal::Malformed);
        };
        let ts: u64 = ts.parse().map_err(|_| Refusal::Malformed)?;
        let mac = hex::decode(mac).map_err(|_| Refusal::Malformed)?;
        if now.abs_diff(ts) > MAX_SKEW.as_secs() {
            return Err(Refusal::Expired);
        }
        // Constant time: how much of a forged tag was right does not show in the time taken.
        hmac::verify(&self.key, &self.message(method, path_and_query, ts), &mac)
            .map_err(|_| Refusal::BadProof)
    }

    fn message(&self, method: &str, path_and_query: &str, ts: u64) -> Vec<u8> {
        format!("{}\n{method}\n{path_and_query}\n{ts}", self.domain).into_bytes()
    }
}

/// Seconds since the epoch, by this host's clock.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> PeerKey {
        PeerKey::new(&Secret::new(s))
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const PATH: &str = "/_berth/peer/v1/healthz";

    #[test]
    fn a_signed_request_is_accepted() {
        let k = key(SECRET);
        let v = k.sign("GET", PATH, 1_700_000_000);
        assert!(v.to_str().unwrap().starts_with("Berth-Peer 1700000000 "));
        assert_eq!(k.verify("GET", PATH, Some(&v), 1_700_000_000), Ok(()));
        // Within the skew, either way.
        assert_eq!(k.verify("GET", PATH, Some(&v), 1_700_000_060), Ok(()));
        assert_eq!(k.verify("GET", PATH, Some(&v), 1_699_999_940), Ok(()));
        // The secret never shows in the header.
        assert!(!v.to_str().unwrap().contains(SECRET));
    }

    #[test]
    fn refusals_say_why() {
        let k = key(SECRET);
        let t = 1_700_000_000;
        let good = k.sign("GET", PATH, t);
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(k.verify("GET", PATH, None, t), Err(Refusal::Missing));
        assert_eq!(
            k.verify("GET", PATH, Some(&v("Basic YTpi")), t),
            Err(Refusal::Missing)
        );
        for bad in [
            "Berth-Peer",
            "Berth-Peer 1700000000",
            "Berth-Peer soon abcd",
            "Berth-Peer 1700000000 xyz",
            "Berth-Peer 1700000000 abcd extra",
        ] {
            assert_eq!(
                k.verify("GET", PATH, Some(&v(bad)), t),
                Err(Refusal::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            k.verify("GET", PATH, Some(&good), t + 61),
            Err(Refusal::Expired)
        );
        // Another secret, another path, another method, another time in the header.
        let other = key("fedcba9876543210fedcba9876543210");
        assert_eq!(
            other.verify("GET", PATH, Some(&good), t),
            Err(Refusal::BadProof)
        );
        assert_eq!(
            k.verify("GET", "/_berth/peer/v1/other", Some(&good), t),
            Err(Refusal::BadProof)
        );
        assert_eq!(
            k.verify("HEAD", PATH, Some(&good), t),
            Err(Refusal::BadProof)
        );
        let moved = good
            .to_str()
            .unwrap()
            .replacen("1700000000", "1700000001", 1);
        assert_eq!(
            k.verify("GET", PATH, Some(&v(&moved)), t),
            Err(Refusal::BadProof)
        );
    }

    /// Another protocol over the same secret (the fleet's): its proofs and the cluster's never
    /// stand for each other, whether the scheme name is kept or changed in the header.
    #[test]
    fn a_proof_of_another_protocol_is_refused() {
        let secret = Secret::new(SECRET);
        let (cluster, other) = (
            PeerKey::new(&secret),
            PeerKey::for_protocol(&secret, "Berth-Other", "berth-other-v1"),
        );
        let t = 1_700_000_000;
        let theirs = other.sign("GET", PATH, t);
        assert!(theirs.to_str().unwrap().starts_with("Berth-Other "));
        assert_eq!(other.verify("GET", PATH, Some(&theirs), t), Ok(()));
        assert_eq!(
            cluster.verify("GET", PATH, Some(&theirs), t),
            Err(Refusal::Missing)
        );
        let renamed =
            HeaderValue::from_str(&theirs.to_str().unwrap().replacen("Berth-Other", SCHEME, 1))
                .unwrap();
        assert_eq!(
            cluster.verify("GET", PATH, Some(&renamed), t),
            Err(Refusal::BadProof)
        );
        let ours = cluster.sign("GET", PATH, t);
        let renamed =
            HeaderValue::from_str(&ours.to_str().unwrap().replacen(SCHEME, "Berth-Other", 1))
                .unwrap();
        assert_eq!(
            other.verify("GET", PATH, Some(&renamed), t),
            Err(Refusal::BadProof)
        );
    }

    /// A tag right in all but its last byte, or only in its first, is refused alike: the check is
    /// `ring::hmac::verify`, which compares in constant time (no early exit at the first wrong
    /// byte; a timing measurement would be too noisy to test here, so the call is what is pinned).
    #[test]
    fn near_misses_are_refused_by_the_constant_time_check() {
        let k = key(SECRET);
        let t = 1_700_000_000;
        let good = k.sign("GET", PATH, t).to_str().unwrap().to_owned();
        let (head, mac) = good.rsplit_once(' ').unwrap();
        let mut last = hex::decode(mac).unwrap();
        *last.last_mut().unwrap() ^= 1;
        let mut first = hex::decode(mac).unwrap();
        first[0] ^= 1;
        let short = &mac[..mac.len() - 2];
        for forged in [hex::encode(last), hex::encode(first), short.to_owned()] {
            let v = HeaderValue::from_str(&format!("{head} {forged}")).unwrap();
            assert_eq!(k.verify("GET", PATH, Some(&v), t), Err(Refusal::BadProof));
        }
    }
}
