//! The htpasswd file: `user:hash` lines, bcrypt hashes only.
//!
//! A pure parser: text in, users out, or the first bad line with its number. Only bcrypt
//! (`$2y$`, `$2b$`, `$2a$`; what `htpasswd -B` writes) is accepted: the other kinds htpasswd can
//! write (MD5 `$apr1$`, SHA-1 `{SHA}`, crypt, plain text) are fast to brute-force or not hashed
//! at all, and a file that mixes them in would silently weaken every login.
//!
//! Rule of dependency: a leaf (the `bcrypt` crate checks a hash's shape).

use std::collections::HashMap;
use std::str::FromStr;

/// The users of one version of the file.
#[derive(Clone, Default)]
pub struct Users {
    by_name: HashMap<String, String>,
}

impl std::fmt::Debug for Users {
    // The hashes are secrets too (offline guessing): only the names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Users").field("names", &names).finish()
    }
}

/// A line that is not a `user:bcrypt-hash` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct BadLine {
    pub line: usize,
    pub reason: String,
}

impl Users {
    /// The bcrypt hash of `user`, if the file names them.
    pub fn hash(&self, user: &str) -> Option<&str> {
        self.by_name.get(user).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The hash of greatest cost in the file: an unknown user is checked against it, so that a
    /// wrong name takes as long as a wrong password (no user enumeration by timing).
    pub fn costliest(&self) -> Option<&str> {
        self.by_name
            .values()
            .max_by_key(|h| bcrypt::HashParts::from_str(h).map_or(0, |p| p.get_cost()))
            .map(String::as_str)
    }
}

/// Parses htpasswd text. Blank lines and lines starting with `#` are skipped; anything else must
/// be `user:hash` with a bcrypt hash, and a user may appear once.
pub fn parse(text: &str) -> Result<Users, BadLine> {
    let mut by_name = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let bad = |reason: String| BadLine { line, reason };
        let entry = raw.trim_end_matches('\r');
        if entry.trim().is_empty() || entry.trim_start().starts_with('#') {
            continue;
        }
        let Some((user, hash)) = entry.split_once(':') else {
            return Err(bad("not a user:hash entry".into()));
        };
        if user.is_empty() {
            return Err(bad("the user name is empty".into()));
        }
        if !["$2y$", "$2b$", "$2a$"]
            .iter()
            .any(|prefix| hash.starts_with(prefix))
        {
            return Err(bad(format!(
                "user {user:?}: the password is {}; only bcrypt entries are accepted \
                 (htpasswd -B)",
                hash_kind(hash)
            )));
        }
        if let Err(e) = bcrypt::HashParts::from_str(hash) {
            return Err(bad(format!("user {user:?}: not a valid bcrypt hash ({e})")));
        }
        if by_name.insert(user.to_owned(), hash.to_owned()).is_some() {
            return Err(bad(format!("user {user:?} appears more than once")));
        }
    }
    Ok(Users { by_name })
}

/// What kind of (non-bcrypt) entry a hash is, for the error message.
fn hash_kind(hash: &str) -> &'static str {
    match hash {
        h if h.starts_with("$apr1$") => "an MD5 hash ($apr1$, htpasswd -m)",
        h if h.starts_with("{SHA}") => "a SHA-1 hash ({SHA}, htpasswd -s)",
        h if h.starts_with("$5$") || h.starts_with("$6$") => "a SHA-crypt hash ($5$/$6$)",
        h if h.starts_with("$2x$") => "a bcrypt $2x$ hash (from a buggy implementation)",
        h if h.starts_with('$') => "an unknown hash kind",
        h if h.len() == 13 => "a DES crypt hash (htpasswd -d) or plain text",
        _ => "plain text or an unknown hash kind",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `htpasswd -nbB -C 4 alice secret`
    const ALICE: &str = "$2y$04$ScBQEWenuutfoWG5lloQieGzpdoAdmEdri.H1XtTWWQxp9mtJggTa";

    #[test]
    fn bcrypt_entries_are_read_comments_and_blank_lines_skipped() {
        let bob = ALICE.replacen("$2y$", "$2b$", 1);
        let carol = ALICE.replacen("$2y$", "$2a$", 1);
        let text = format!("# users\n\nalice:{ALICE}\r\nbob:{bob}\n  \ncarol:{carol}\n");
        let users = parse(&text).unwrap();
        assert_eq!(users.len(), 3);
        assert_eq!(users.hash("alice"), Some(ALICE));
        assert_eq!(users.hash("bob"), Some(bob.as_str()));
        assert_eq!(users.hash("dave"), None);
        assert!(bcrypt::verify("secret", users.hash("alice").unwrap()).unwrap());
    }

    #[test]
    fn other_hash_kinds_are_refused_naming_the_line() {
        for (hash, kind) in [
            ("$apr1$abc$def", "MD5"),
            ("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1"),
            ("$6$salt$hash", "SHA-crypt"),
            ("rqXexS6ZhobKA", "DES"),
            ("plaintext-password", "plain text"),
        ] {
            let text = format!("alice:{ALICE}\n\nbob:{hash}\n");
            let e = parse(&text).unwrap_err();
            assert_eq!(e.line, 3, "{hash}");
            assert!(e.reason.contains("\"bob\""), "{e}");
            assert!(e.reason.contains(kind), "{e}");
            assert!(e.to_string().starts_with("line 3: "), "{e}");
        }
    }

    #[test]
    fn malformed_lines_are_refused() {
        let broken = &ALICE[..ALICE.len() - 5];
        for (text, want) in [
            ("alice".to_owned(), "not a user:hash"),
            (format!(":{ALICE}"), "empty"),
            (format!("alice:{broken}"), "not a valid bcrypt hash"),
            (format!("alice:{ALICE}\nalice:{ALICE}"), "more than once"),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.reason.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn the_costliest_hash_stands_in_for_unknown_users() {
        let dear = "$2y$06$C8lQ9bFgotc3R.ydtg6j9esvgEJ.VeY9j1gCod3/5DLcrfUeURp/e";
        let users = parse(&format!("alice:{ALICE}\nbob:{dear}\n")).unwrap();
        assert_eq!(users.costliest(), Some(dear));
        assert_eq!(Users::default().costliest(), None);
    }

    #[test]
    fn debug_shows_names_not_hashes() {
        let users = parse(&format!("alice:{ALICE}\n")).unwrap();
        let shown = format!("{users:?}");
        assert!(
            shown.contains("alice") && !shown.contains("$2y$"),
            "{shown}"
        );
    }
}
