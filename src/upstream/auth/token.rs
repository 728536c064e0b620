//! Bearer tokens, without I/O: a token realm's answer ([`TokenResponse`]), what a token is good for
//! ([`TokenKey`]) and the cache that keeps them until they expire ([`TokenCache`]).
//!
//! Rule of dependency: a leaf under `upstream::auth`; uses `config` (`Secret`).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use crate::config::Secret;

#[derive(Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The Docker token spec's default lifetime when `expires_in` is missing.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A token is dropped this long before the realm said it expires, so it does not run out between
/// the cache lookup and the upstream checking it.
pub const TOKEN_MARGIN: Duration = Duration::from_secs(10);

impl TokenResponse {
    /// The token and how long to keep it, or `None` if the answer carries no token.
    pub fn into_token(self) -> Option<(Secret, Duration)> {
        let token = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))?;
        let lifetime = self
            .expires_in
            .filter(|&s| s > 0)
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        // At most half the lifetime goes to the margin, so a short-lived token is still reused a bit.
        let keep = lifetime - TOKEN_MARGIN.min(lifetime / 2);
        Some((Secret::new(token), keep))
    }
}

/// What a token is good for: the realm that issued it, its service and its scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub realm: Url,
    pub service: Option<String>,
    pub scope: Option<String>,
}

/// Bearer tokens of one upstream, until they expire. Uses tokio's clock, so expiry is tested with
/// `tokio::time::pause`.
#[derive(Default)]
pub struct TokenCache {
    tokens: HashMap<TokenKey, (Secret, Instant)>,
}

/// Above this many tokens, expired ones are swept on insert (one per repository pulled recently).
const SWEEP_ABOVE: usize = 1024;

impl TokenCache {
    pub fn get(&self, key: &TokenKey) -> Option<Secret> {
        let (token, until) = self.tokens.get(key)?;
        (Instant::now() < *until).then(|| token.clone())
    }

    pub fn insert(&mut self, key: TokenKey, token: Secret, keep: Duration) {
        let now = Instant::now();
        if self.tokens.len() >= SWEEP_ABOVE {
            self.tokens.retain(|_, (_, until)| *until > now);
        }
        self.tokens.insert(key, (token, now + keep));
    }

    /// Drops `key`'s token if it is still `stale` (a newer one fetched meanwhile stays).
    pub fn remove_if(&mut self, key: &TokenKey, stale: &Secret) {
        if self.tokens.get(key).is_some_and(|(t, _)| t == stale) {
            self.tokens.remove(key);
        }
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_responses() {
        let parse = |s: &str| {
            serde_json::from_str::<TokenResponse>(s)
                .unwrap()
                .into_token()
                .map(|(t, d)| (t.expose().to_owned(), d.as_secs()))
        };
        assert_eq!(
            parse(r#"{"token":"a","expires_in":300}"#),
            Some(("a".into(), 290))
        );
        assert_eq!(parse(r#"{"access_token":"b"}"#), Some(("b".into(), 50)));
        assert_eq!(
            parse(r#"{"token":"","access_token":"c","expires_in":4}"#),
            Some(("c".into(), 2))
        );
        assert_eq!(
            parse(r#"{"token":"d","expires_in":0}"#),
            Some(("d".into(), 50))
        );
        assert_eq!(parse(r#"{"expires_in":10}"#), None);
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_expire() {
        let key = TokenKey {
            realm: "https://auth.example/token".parse().unwrap(),
            service: Some("s".into()),
            scope: Some("repository:a:pull".into()),
        };
        let mut cache = TokenCache::default();
        cache.insert(key.clone(), Secret::new("t1"), Duration::from_secs(50));
        assert_eq!(cache.get(&key).unwrap().expose(), "t1");
        tokio::time::advance(Duration::from_secs(49)).await;
        assert!(cache.get(&key).is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(cache.get(&key).is_none());

        cache.insert(key.clone(), Secret::new("t2"), Duration::from_secs(50));
        cache.remove_if(&key, &Secret::new("t1"));
        assert!(cache.get(&key).is_some(), "a newer token survives");
        cache.remove_if(&key, &Secret::new("t2"));
        assert!(cache.get(&key).is_none());
        assert!(!format!("{cache:?}").contains("t2"));
    }
}
