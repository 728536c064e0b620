//! `WWW-Authenticate` parsing, without I/O: strict, so a half-understood challenge never decides
//! where credentials go. Fuzzed (`fuzz/fuzz_targets/challenge.rs`).
//!
//! Rule of dependency: a leaf under `upstream::auth`.

/// One challenge from a `WWW-Authenticate` header: `Bearer realm="..",service=".."`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// As sent; compare with [`Challenge::is`].
    pub scheme: String,
    /// Parameter names lowercased (they are case-insensitive), values unquoted and unescaped.
    pub params: Vec<(String, String)>,
    /// The `token68` form (`Negotiate abc==`); registries do not use it, but it must not break parsing.
    pub token68: Option<String>,
}

impl Challenge {
    pub fn is(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed WWW-Authenticate at byte {at}: {reason}")]
pub struct ChallengeError {
    pub at: usize,
    pub reason: &'static str,
}

/// RFC 7230 `tchar`.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// RFC 7235 `token68` (without its trailing `=` padding).
fn is_token68_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~+/".contains(&c)
}

/// Parses one `WWW-Authenticate` header value, which may hold several challenges
/// (`Basic realm="a", Bearer realm="b",scope="c"`). Strict: anything malformed fails the whole value,
/// so a half-understood challenge never decides where credentials go.
pub fn parse_challenges(value: &str) -> Result<Vec<Challenge>, ChallengeError> {
    let mut p = Parser {
        s: value.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    loop {
        p.skip(|c| c == b',' || is_ws(c));
        if p.done() {
            break;
        }
        let scheme = p.token();
        if scheme.is_empty() {
            return Err(p.err("expected an auth scheme"));
        }
        let mut ch = Challenge {
            scheme: scheme.to_owned(),
            params: Vec::new(),
            token68: None,
        };
        let had_space = p.skip(is_ws) > 0;
        if had_space && !p.done() && p.peek() != Some(b',') {
            if let Some(t) = p.try_token68() {
                ch.token68 = Some(t);
            } else {
                p.params(&mut ch.params)?;
            }
        } else if !p.done() && p.peek() != Some(b',') {
            return Err(p.err("expected a space after the auth scheme"));
        }
        out.push(ch);
    }
    Ok(out)
}

fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn err(&self, reason: &'static str) -> ChallengeError {
        ChallengeError { at: self.i, reason }
    }

    fn skip(&mut self, f: impl Fn(u8) -> bool) -> usize {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        self.i - start
    }

    fn token(&mut self) -> &str {
        let start = self.i;
        self.skip(is_tchar);
        // tchars are ASCII, so this slice is valid UTF-8.
        std::str::from_utf8(&self.s[start..self.i]).unwrap_or("")
    }

    /// A `token68` that is the whole rest of this challenge (followed by the end or a comma).
    fn try_token68(&mut self) -> Option<String> {
        let start = self.i;
        let mut j = self.i;
        while j < self.s.len() && is_token68_char(self.s[j]) {
            j += 1;
        }
        let body_end = j;
        while j < self.s.len() && self.s[j] == b'=' {
            j += 1;
        }
        let mut k = j;
        while k < self.s.len() && is_ws(self.s[k]) {
            k += 1;
        }
        // `name=value` has something after the `=`; a token68 ends at its padding.
        let ends = k >= self.s.len() || self.s[k] == b',';
        if body_end > start && ends {
            self.i = k;
            Some(String::from_utf8_lossy(&self.s[start..j]).into_owned())
        } else {
            None
        }
    }

    /// `name = value` pairs separated by commas, until the end or the next challenge's scheme.
    fn params(&mut self, params: &mut Vec<(String, String)>) -> Result<(), ChallengeError> {
        loop {
            let save = self.i;
            self.skip(|c| is_ws(c) || c == b',');
            if self.done() {
                return Ok(());
            }
            let name = self.token().to_ascii_lowercase();
            if name.is_empty() {
                return Err(self.err("expected a parameter name"));
            }
            self.skip(is_ws);
            if self.peek() != Some(b'=') {
                if params.is_empty() {
                    return Err(self.err("expected '=' after a parameter name"));
                }
                // A token not followed by '=' starts the next challenge.
                self.i = save;
                return Ok(());
            }
            self.i += 1;
            self.skip(is_ws);
            let value = if self.peek() == Some(b'"') {
                self.quoted()?
            } else {
                let v = self.token();
                if v.is_empty() {
                    return Err(self.err("expected a parameter value"));
                }
                v.to_owned()
            };
            if params.iter().any(|(n, _)| *n == name) {
                return Err(self.err("a parameter appears twice"));
            }
            params.push((name, value));
            self.skip(is_ws);
            match self.peek() {
                None => return Ok(()),
                Some(b',') => {}
                Some(_) => return Err(self.err("expected ',' between parameters")),
            }
        }
    }

    /// A quoted-string, with `\` escapes; the opening quote is at `self.i`.
    fn quoted(&mut self) -> Result<String, ChallengeError> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated quoted string")),
                Some(b'"') => {
                    self.i += 1;
                    return String::from_utf8(out).map_err(|_| self.err("not UTF-8"));
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        None => return Err(self.err("unterminated quoted string")),
                        Some(c) => out.push(c),
                    }
                    self.i += 1;
                }
                Some(c) if c == b'\t' || c >= 0x20 && c != 0x7f => {
                    out.push(c);
                    self.i += 1;
                }
                Some(_) => return Err(self.err("control character in quoted string")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(v: &str) -> Challenge {
        let mut c = parse_challenges(v).unwrap();
        assert_eq!(c.len(), 1, "{v}: {c:?}");
        c.remove(0)
    }

    #[test]
    fn docker_hub_bearer() {
        let c = one(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert!(c.is("bearer"));
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/nginx:pull"));
    }

    #[test]
    fn commas_inside_quotes_and_spaces_around_equals() {
        let c = one(
            r#"Bearer realm = "https://r.io/token" , scope="repository:a:pull,push",service=reg"#,
        );
        assert_eq!(c.param("scope"), Some("repository:a:pull,push"));
        assert_eq!(c.param("service"), Some("reg"));
        assert_eq!(c.param("REALM"), Some("https://r.io/token"));
    }

    #[test]
    fn escapes_in_quoted_strings() {
        let c = one(r#"Basic realm="say \"hi\" \\ there""#);
        assert_eq!(c.param("realm"), Some(r#"say "hi" \ there"#));
    }

    #[test]
    fn several_challenges_in_one_header() {
        let c = parse_challenges(
            r#"Basic realm="x, y", Bearer realm="https://r.io/t",service="s", Negotiate abc=="#,
        )
        .unwrap();
        assert_eq!(c.len(), 3, "{c:?}");
        assert!(c[0].is("Basic"));
        assert_eq!(c[0].param("realm"), Some("x, y"));
        assert!(c[1].is("Bearer"));
        assert_eq!(c[1].param("service"), Some("s"));
        assert_eq!(c[2].token68.as_deref(), Some("abc=="));
    }

    #[test]
    fn bare_schemes() {
        let c = parse_challenges("Basic, Bearer").unwrap();
        assert_eq!(c.len(), 2);
        assert!(c[0].params.is_empty() && c[1].is("bearer"));
        assert!(parse_challenges("").unwrap().is_empty());
        assert!(parse_challenges(" , ").unwrap().is_empty());
    }

    #[test]
    fn token68_is_not_a_parameter() {
        // `realm=` with nothing after it is valid token68 syntax, not a realm.
        let c = one("Bearer realm=");
        assert_eq!(c.token68.as_deref(), Some("realm="));
        assert_eq!(c.param("realm"), None);
    }

    #[test]
    fn empty_quoted_value() {
        assert_eq!(one(r#"Bearer realm="""#).param("realm"), Some(""));
    }

    #[test]
    fn malformed() {
        for bad in [
            r#"Bearer realm="unterminated"#,
            r#"Bearer realm="ends in escape\"#,
            r#"Bearer realm=,service=s"#,
            r#"Bearer realm="a" service="b""#,
            r#"Bearer realm="a",realm="b""#,
            r#"Bearer ="a""#,
            r#"Bearer realm "a""#,
            "Bearer realm=\"a\u{1}\"",
            r#""Bearer""#,
            r#"Bearer"realm""#,
            "=",
            r#"Bearer realm="a",="b""#,
        ] {
            assert!(parse_challenges(bad).is_err(), "{bad:?} should fail");
        }
    }
}
