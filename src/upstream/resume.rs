//! Resuming a blob whose body broke off: what an upstream's answer to `Range: bytes=<received>-`
//! means. A 206 must continue exactly where the body stopped and run to the end of a blob of the
//! same size; a 200 is the whole blob again (an upstream that ignores `Range`), read with the
//! known part skipped. The fill (`fill::job`) sends the request and follows the answer; the rule is
//! here, pure, beside the retry policy of whole requests ([`super::retry`]), and fuzzed
//! (`fuzz/fuzz_targets/range.rs`). Whatever passes here, the digest check at the end of the fill
//! still guards the bytes.
//!
//! Rule of dependency: a leaf of `upstream` (uses `request`'s header readers); `fill` and the
//! mirror's range property test use it.

use http::{HeaderMap, StatusCode};

use super::{content_length, header_str};

/// A `Content-Range: bytes <first>-<last>/<size>` of a 206, as an upstream sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    /// Inclusive, and never before `first`.
    pub last: u64,
    /// `None` for `*` (size unknown to the sender).
    pub size: Option<u64>,
}

impl ContentRange {
    /// Parses a satisfied byte range; `None` for anything else (an unsatisfied `bytes */n`, a
    /// span that runs backwards or past the size, other units, garbage).
    pub fn parse(value: &str) -> Option<ContentRange> {
        let (span, size) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
        let (a, b) = span.split_once('-')?;
        let (first, last): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        let size = match size.trim() {
            "*" => None,
            n => Some(n.parse::<u64>().ok()?),
        };
        (first <= last && size.is_none_or(|s| last < s)).then_some(ContentRange {
            first,
            last,
            size,
        })
    }
}

/// How a 2xx answer to `Range: bytes=<received>-` continues a blob of `total` bytes (when known):
/// the number of bytes at the start of its body to skip, or why it does not continue the blob.
/// A 206 must start exactly at `received` and run to the end of a blob of the same size; a 200 is
/// the whole blob again (an upstream that ignores `Range`), so its first `received` bytes are
/// skipped. Whatever passes here, the digest check at the end still guards the bytes.
pub(crate) fn continuation(
    status: StatusCode,
    headers: &HeaderMap,
    received: u64,
    total: Option<u64>,
) -> Result<u64, String> {
    match status {
        StatusCode::PARTIAL_CONTENT => {
            let raw = header_str(headers, "content-range").unwrap_or("");
            let ContentRange {
                first: a,
                last: b,
                size,
            } = ContentRange::parse(raw)
                .ok_or_else(|| format!("206 with an unusable Content-Range {raw:?}"))?;
            if a != received {
                return Err(format!("206 for {raw:?}, not from byte {received}"));
            }
            if let (Some(t), Some(s)) = (total, size)
                && t != s
            {
                return Err(format!("206 for a blob of {s} bytes, not {t}"));
            }
            if let Some(end) = total.or(size)
                && b.checked_add(1) != Some(end)
            {
                return Err(format!("206 for {raw:?}, not to the end of {end} bytes"));
            }
            Ok(0)
        }
        StatusCode::OK => match (total, content_length(headers)) {
            (Some(t), Some(n)) if t != n => {
                Err(format!("200 with {n} bytes, not the {t} of the blob"))
            }
            _ => Ok(received),
        },
        s => Err(format!("answered {s} to a range request")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn content_ranges() {
        let cr = |first, last, size| Some(ContentRange { first, last, size });
        assert_eq!(ContentRange::parse("bytes 0-0/1"), cr(0, 0, Some(1)));
        assert_eq!(ContentRange::parse(" bytes 40-99/* "), cr(40, 99, None));
        assert_eq!(ContentRange::parse("bytes 1 - 2 / 3"), cr(1, 2, Some(3)));
        for bad in [
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes */10",
            "bytes 0-1/x",
            "bytes -1-2/3",
            "bytes 0-1",
            "items 0-1/2",
            "bytes 0-18446744073709551616/*",
            "",
        ] {
            assert_eq!(ContentRange::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn what_continues_a_broken_blob() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        let partial = StatusCode::PARTIAL_CONTENT;
        let cr = |v| h(&[("content-range", v)]);
        assert_eq!(
            continuation(partial, &cr("bytes 40-99/100"), 40, Some(100)),
            Ok(0)
        );
        assert_eq!(
            continuation(partial, &cr("bytes 40-99/*"), 40, Some(100)),
            Ok(0)
        );
        // Size unknown until now: the range's own total must be its end.
        assert_eq!(
            continuation(partial, &cr("bytes 40-99/100"), 40, None),
            Ok(0)
        );
        assert_eq!(continuation(partial, &cr("bytes 40-99/*"), 40, None), Ok(0));
        for bad in [
            "bytes 0-99/100",
            "bytes 41-99/100",
            "bytes 40-98/100",
            "bytes 40-99/101",
            "bytes 40-30/100",
            "bytes */100",
            "items 40-99/100",
            "bytes 40-99",
            "",
        ] {
            assert!(
                continuation(partial, &cr(bad), 40, Some(100)).is_err(),
                "{bad:?}"
            );
        }
        assert!(continuation(partial, &HeaderMap::new(), 40, Some(100)).is_err());
        assert!(continuation(partial, &cr("bytes 40-98/100"), 40, None).is_err());
        // 200: the whole blob again, the known part skipped.
        let ok = StatusCode::OK;
        assert_eq!(
            continuation(ok, &h(&[("content-length", "100")]), 40, Some(100)),
            Ok(40)
        );
        assert_eq!(continuation(ok, &HeaderMap::new(), 40, None), Ok(40));
        // An upstream's largest end does not overflow either.
        let max = format!("bytes 40-{}/{}", u64::MAX, u64::MAX);
        let mut m = HeaderMap::new();
        m.insert("content-range", max.parse().unwrap());
        assert!(continuation(StatusCode::PARTIAL_CONTENT, &m, 40, Some(100)).is_err());
        assert!(continuation(ok, &h(&[("content-length", "60")]), 40, Some(100)).is_err());
        assert!(continuation(StatusCode::NO_CONTENT, &HeaderMap::new(), 40, Some(100)).is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn a_content_range_of_a_continuation_is_accepted(received in 0u64..1 << 40, rest in 1u64..1 << 40) {
                let total = received + rest;
                let v = format!("bytes {received}-{}/{total}", total - 1);
                let mut h = HeaderMap::new();
                h.insert("content-range", HeaderValue::from_str(&v).unwrap());
                prop_assert_eq!(continuation(StatusCode::PARTIAL_CONTENT, &h, received, Some(total)), Ok(0));
            }
        }
    }
}
