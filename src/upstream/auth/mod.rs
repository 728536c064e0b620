//! Registry authentication: answering an upstream's `401` with Basic credentials or a bearer token,
//! and carrying what the last challenge asked for on later requests.
//!
//! The token flow: a challenge (`challenge`) names a realm, berth checks that realm (`guard`, no
//! plain http behind https), asks it for a token for the request's scope, one fetch at a time per
//! upstream, and keeps the token (`token`) until shortly before it expires; a cached token the
//! upstream refuses is dropped and fetched again once. Who may see the configured credentials is
//! decided here ([`credentials_allowed`]): the upstream's origin and the realms of `auth_realms`,
//! never a realm a challenge merely names.
//!
//! Rule of dependency: under `upstream`, uses its parent's [`Upstream`] (its client and settings),
//! `response` (reading the token body) and `status` (a realm's error answer); `config`, `error`.
//! Its `challenge` and `token` files are pure leaves.

mod challenge;
mod token;

use std::time::Duration;

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use tracing::debug;
use url::Url;

pub use self::challenge::{Challenge, ChallengeError, parse_challenges};
pub use self::token::{DEFAULT_TOKEN_LIFETIME, TOKEN_MARGIN, TokenCache, TokenKey, TokenResponse};
use super::response::SMALL_BODY_LIMIT;
use super::status::NotFoundKind;
use super::{Upstream, redact};
use crate::config::Secret;
use crate::error::Error;

/// Where berth may send the upstream's username and password: the upstream's own origin (scheme,
/// host and port), and token realms the configuration lists (same origin and path). Never a realm
/// that a challenge merely names: a registry (or whoever answers in its name) could point it anywhere.
pub fn credentials_allowed(upstream: &Url, auth_realms: &[Url], target: &Url) -> bool {
    if !matches!(target.scheme(), "http" | "https") {
        return false;
    }
    if same_origin(upstream, target) {
        return true;
    }
    auth_realms.iter().any(|r| {
        same_origin(r, target)
            && r.path().trim_end_matches('/') == target.path().trim_end_matches('/')
    })
}

/// Scheme, host and port (default ports filled in) are equal.
pub fn same_origin(a: &Url, b: &Url) -> bool {
    let a = a.origin();
    a.is_tuple() && a == b.origin()
}

/// A token realm's answer: Docker's `token`, or OAuth2's `access_token`.
#[derive(Debug, Default)]
pub(super) struct AuthState {
    /// What the upstream asked for last, so later requests can carry auth from the start.
    scheme: Option<Scheme>,
    tokens: TokenCache,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scheme {
    Basic,
    Bearer { realm: Url, service: Option<String> },
}

/// The auth a request carries.
#[derive(Debug)]
pub(super) enum Attached {
    None,
    Basic,
    Bearer {
        key: TokenKey,
        token: Secret,
        /// Taken from the cache (may be revoked) rather than just issued.
        cached: bool,
    },
}

impl Upstream {
    /// Auth known from earlier challenges: a cached token, a new token for a new scope, or Basic.
    pub(super) async fn proactive_auth(&self, scope: Option<&str>) -> Result<Attached, Error> {
        let scheme = self.auth.lock().expect("auth lock").scheme.clone();
        match scheme {
            None => Ok(Attached::None),
            Some(Scheme::Basic) => Ok(if self.cfg.credentials().is_some() {
                Attached::Basic
            } else {
                Attached::None
            }),
            Some(Scheme::Bearer { realm, service }) => {
                let key = TokenKey {
                    realm,
                    service,
                    scope: scope.map(str::to_owned),
                };
                let cached = self.auth.lock().expect("auth lock").tokens.get(&key);
                if let Some(token) = cached {
                    return Ok(Attached::Bearer {
                        key,
                        token,
                        cached: true,
                    });
                }
                Ok(match self.token(&key, None).await? {
                    Some(token) => Attached::Bearer {
                        key,
                        token,
                        cached: false,
                    },
                    None => Attached::None,
                })
            }
        }
    }

    /// The auth to retry a 401 with, or `None` to hand the 401 to the caller.
    pub(super) async fn answer(
        &self,
        challenges: &[Challenge],
        prev: &Attached,
        scope: Option<&str>,
    ) -> Result<Option<Attached>, Error> {
        let bearer = challenges
            .iter()
            .find(|c| c.is("bearer") && c.param("realm").is_some());
        if let Some(ch) = bearer {
            let Some(realm) = self.usable_realm(ch.param("realm").unwrap_or_default()) else {
                return Ok(None);
            };
            let service = ch.param("service").map(str::to_owned);
            let key = TokenKey {
                realm: realm.clone(),
                service: service.clone(),
                scope: scope.or(ch.param("scope")).map(str::to_owned),
            };
            let mut stale = None;
            if let Attached::Bearer {
                key: k,
                token,
                cached,
            } = prev
            {
                self.auth
                    .lock()
                    .expect("auth lock")
                    .tokens
                    .remove_if(k, token);
                if !cached && *k == key {
                    debug!(upstream = %self.name, "a token just issued was refused");
                    return Ok(None);
                }
                stale = Some(token);
            }
            self.auth.lock().expect("auth lock").scheme = Some(Scheme::Bearer { realm, service });
            return Ok(self
                .token(&key, stale)
                .await?
                .map(|token| Attached::Bearer {
                    key,
                    token,
                    cached: false,
                }));
        }
        if challenges.iter().any(|c| c.is("basic")) {
            if self.cfg.credentials().is_none() || matches!(prev, Attached::Basic) {
                return Ok(None);
            }
            self.auth.lock().expect("auth lock").scheme = Some(Scheme::Basic);
            return Ok(Some(Attached::Basic));
        }
        debug!(upstream = %self.name, ?challenges, "401 without a challenge berth can answer");
        Ok(None)
    }

    /// A realm berth will ask for tokens: http(s), and not plain http behind an https upstream.
    fn usable_realm(&self, realm: &str) -> Option<Url> {
        let url = match Url::parse(realm) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
            _ => {
                debug!(upstream = %self.name, "unusable token realm in challenge");
                return None;
            }
        };
        if self.cfg.url.scheme() == "https" && url.scheme() == "http" {
            debug!(upstream = %self.name, realm = %redact(&url), "refusing a plain-http token realm");
            return None;
        }
        if let Err(why) = self.guard.check_url(&url) {
            tracing::warn!(upstream = %self.name, realm = %redact(&url), %why, "refusing a token realm");
            return None;
        }
        Some(url)
    }

    pub(super) fn authorization(&self, attached: &Attached) -> Option<HeaderValue> {
        let value = match attached {
            Attached::None => return None,
            Attached::Basic => basic_auth(self.cfg.credentials()?)?,
            Attached::Bearer { token, .. } => {
                HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?
            }
        };
        Some(value)
    }

    /// A token for `key`: from the cache if someone fetched it meanwhile (and it is not `stale`),
    /// else from the realm. `Ok(None)` when the realm refuses.
    async fn token(&self, key: &TokenKey, stale: Option<&Secret>) -> Result<Option<Secret>, Error> {
        let _one_at_a_time = self.token_fetch.lock().await;
        let cached = self.auth.lock().expect("auth lock").tokens.get(key);
        if let Some(t) = cached
            && Some(&t) != stale
        {
            return Ok(Some(t));
        }
        let outcome = self.fetch_token(key).await;
        let label = match &outcome {
            Ok(Some(_)) => "issued",
            Ok(None) => "denied",
            Err(_) => "failed",
        };
        self.metrics
            .token_requests
            .with_label_values(&[&self.cfg.name, label])
            .inc();
        let Some((token, keep)) = outcome? else {
            return Ok(None);
        };
        self.auth
            .lock()
            .expect("auth lock")
            .tokens
            .insert(key.clone(), token.clone(), keep);
        Ok(Some(token))
    }

    async fn fetch_token(&self, key: &TokenKey) -> Result<Option<(Secret, Duration)>, Error> {
        let mut url = key.realm.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = &key.service {
                q.append_pair("service", s);
            }
            if let Some(s) = &key.scope {
                q.append_pair("scope", s);
            }
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::USER_AGENT, self.user_agent.clone());
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let auth = match self.cfg.credentials() {
            Some(creds) if credentials_allowed(&self.cfg.url, &self.cfg.auth_realms, &url) => {
                basic_auth(creds)
            }
            Some(_) => {
                debug!(upstream = %self.name, realm = %redact(&url),
                    "realm is not the upstream's origin nor in auth_realms: asking for an anonymous token");
                None
            }
            None => None,
        };
        let resp = self
            .exchange(&Method::GET, &url, &headers, auth, false)
            .await
            .map_err(|f| f.error)?;
        let status = resp.status();
        debug!(upstream = %self.name, realm = %redact(&url), status = status.as_u16(), "token response");
        let resp = self.wrap(resp);
        match status {
            s if s.is_success() => {
                let body = resp.bytes(SMALL_BODY_LIMIT).await?;
                // Only the position: serde's message can quote the value, and that may be the token.
                let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                    Error::upstream_bad(
                        &self.name,
                        format!(
                            "malformed token response (line {}, column {})",
                            e.line(),
                            e.column()
                        ),
                    )
                })?;
                parsed
                    .into_token()
                    .map(Some)
                    .ok_or_else(|| Error::upstream_bad(&self.name, "token response holds no token"))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(None),
            _ => match resp.error_for_status(NotFoundKind::Repository).await {
                Err(e) if e.is_not_found() => Err(Error::upstream_bad(
                    &self.name,
                    format!("token realm {} answered 404", redact(&url)),
                )),
                Err(e) => Err(e),
                Ok(_) => Err(Error::upstream_bad(
                    &self.name,
                    format!("token realm answered {status}"),
                )),
            },
        }
    }
}

pub(super) fn challenges(headers: &HeaderMap) -> Vec<Challenge> {
    let mut out = Vec::new();
    for v in headers.get_all(header::WWW_AUTHENTICATE) {
        match v.to_str().map(parse_challenges) {
            Ok(Ok(c)) => out.extend(c),
            Ok(Err(e)) => debug!(error = %e, "ignoring a WWW-Authenticate header"),
            Err(_) => debug!("ignoring a non-ASCII WWW-Authenticate header"),
        }
    }
    out
}

fn basic_auth((user, password): (&str, &Secret)) -> Option<HeaderValue> {
    let raw = format!("{user}:{}", password.expose());
    let mut v = HeaderValue::from_str(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
    .ok()?;
    v.set_sensitive(true);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        s.parse().unwrap()
    }

    #[test]
    fn credential_scope() {
        let up = url("https://registry-1.docker.io");
        let realms = [url("https://auth.docker.io/token")];
        let yes = [
            "https://registry-1.docker.io/v2/x",
            "https://registry-1.docker.io:443/token",
            "https://REGISTRY-1.docker.io/v2/",
            "https://auth.docker.io/token",
            "https://auth.docker.io/token?service=x&scope=y",
            "https://auth.docker.io/token/",
        ];
        for t in yes {
            assert!(credentials_allowed(&up, &realms, &url(t)), "{t}");
        }
        let no = [
            "http://registry-1.docker.io/v2/x",
            "https://registry-1.docker.io:8443/v2/x",
            "https://auth.docker.io/other",
            "http://auth.docker.io/token",
            "https://auth.docker.io:444/token",
            "https://auth.docker.io.evil.example/token",
            "https://auth.docker.io@evil.example/token",
            "https://evil.example/token?realm=https://auth.docker.io/token",
            "https://docker.io/token",
            "file:///etc/passwd",
        ];
        for t in no {
            assert!(!credentials_allowed(&up, &realms, &url(t)), "{t}");
        }
        assert!(!credentials_allowed(
            &up,
            &[],
            &url("https://auth.docker.io/token")
        ));
    }
}
