//! A client's `Range` header: one byte range, parsed without I/O, resolved against the blob's size
//! once it is known (a 416 with the size otherwise). Several ranges, or anything malformed, are
//! ignored, as HTTP allows: the whole blob is answered.
//!
//! Rule of dependency: uses `error` only; `blob` resolves it, `http` parses the header with it.

use crate::error::Error;

/// A byte range a client asked for, not yet checked against the blob's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-` or `bytes=a-b` (b inclusive).
    From(u64, Option<u64>),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses a `Range` header; `None` for anything but one well-formed byte range (which is then
    /// ignored, as HTTP allows).
    pub fn parse(value: &str) -> Option<ByteRange> {
        let spec = value.trim().strip_prefix("bytes=")?.trim();
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        if a.is_empty() {
            return b.parse().ok().map(ByteRange::Suffix);
        }
        let a: u64 = a.parse().ok()?;
        if b.is_empty() {
            return Some(ByteRange::From(a, None));
        }
        let b: u64 = b.parse().ok()?;
        (b >= a).then_some(ByteRange::From(a, Some(b)))
    }

    /// The half-open span `start..end` within a blob of `total` bytes, or 416.
    pub fn resolve(self, total: u64) -> Result<(u64, u64), Error> {
        let span = match self {
            ByteRange::From(a, _) if a >= total => None,
            ByteRange::From(a, b) => Some((a, b.map_or(total, |b| b.saturating_add(1).min(total)))),
            // RFC 9110: a suffix of nothing, or of an empty blob, selects no byte.
            ByteRange::Suffix(0) => None,
            ByteRange::Suffix(_) if total == 0 => None,
            ByteRange::Suffix(n) => Some((total.saturating_sub(n), total)),
        };
        span.ok_or_else(|| Error::range_not_satisfiable(total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    #[test]
    fn ranges() {
        assert_eq!(
            ByteRange::parse("bytes=0-9"),
            Some(ByteRange::From(0, Some(9)))
        );
        assert_eq!(ByteRange::parse("bytes=5-"), Some(ByteRange::From(5, None)));
        assert_eq!(ByteRange::parse("bytes=-3"), Some(ByteRange::Suffix(3)));
        for bad in [
            "bytes=9-0",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "0-1",
        ] {
            assert_eq!(ByteRange::parse(bad), None, "{bad}");
        }
        assert_eq!(ByteRange::From(0, Some(9)).resolve(100).unwrap(), (0, 10));
        assert_eq!(
            ByteRange::From(90, Some(200)).resolve(100).unwrap(),
            (90, 100)
        );
        assert_eq!(ByteRange::From(5, None).resolve(10).unwrap(), (5, 10));
        // The largest end a client can write does not overflow.
        let huge = ByteRange::parse(&format!("bytes=3-{}", u64::MAX)).unwrap();
        assert_eq!(huge.resolve(10).unwrap(), (3, 10));
        assert_eq!(ByteRange::Suffix(3).resolve(10).unwrap(), (7, 10));
        assert_eq!(ByteRange::Suffix(30).resolve(10).unwrap(), (0, 10));
        assert_eq!(
            ByteRange::From(10, None).resolve(10).unwrap_err().kind,
            Kind::RangeNotSatisfiable { size: Some(10) }
        );
        assert_eq!(
            ByteRange::Suffix(0).resolve(10).unwrap_err().kind,
            Kind::RangeNotSatisfiable { size: Some(10) }
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn byte_range() -> impl Strategy<Value = ByteRange> {
            prop_oneof![
                (any::<u64>(), proptest::option::of(any::<u64>()))
                    .prop_map(|(a, b)| { ByteRange::From(a, b.map(|b| b.max(a))) }),
                (0u64..1000, proptest::option::of(0u64..1000))
                    .prop_map(|(a, b)| ByteRange::From(a, b.map(|b| b.max(a)))),
                any::<u64>().prop_map(ByteRange::Suffix),
                (0u64..1000).prop_map(ByteRange::Suffix),
            ]
        }

        fn header(r: ByteRange) -> String {
            match r {
                ByteRange::From(a, Some(b)) => format!("bytes={a}-{b}"),
                ByteRange::From(a, None) => format!("bytes={a}-"),
                ByteRange::Suffix(n) => format!("bytes=-{n}"),
            }
        }

        proptest! {
            #[test]
            fn a_resolved_span_is_inside_the_blob_and_not_empty_or_a_416(
                r in byte_range(),
                total in prop_oneof![Just(0u64), 0u64..1000, any::<u64>()],
            ) {
                prop_assert_eq!(ByteRange::parse(&header(r)), Some(r));
                match r.resolve(total) {
                    Ok((start, end)) => {
                        prop_assert!(start < end && end <= total, "{:?} of {} -> {}..{}", r, total, start, end);
                        if let ByteRange::From(a, _) = r {
                            prop_assert_eq!(start, a);
                        }
                    }
                    Err(e) => {
                        prop_assert_eq!(e.kind, Kind::RangeNotSatisfiable { size: Some(total) });
                        // Only a start past the end or an empty suffix is unsatisfiable.
                        prop_assert!(
                            matches!(r, ByteRange::From(a, _) if a >= total)
                                || matches!(r, ByteRange::Suffix(0))
                                || total == 0
                        );
                    }
                }
            }

            #[test]
            fn range_headers_never_panic(value in "[ -~]{0,40}", total in any::<u64>()) {
                if let Some(r) = ByteRange::parse(&value) {
                    let _ = r.resolve(total);
                }
                if let Some(c) = crate::upstream::ContentRange::parse(&value) {
                    prop_assert!(c.first <= c.last && c.size.is_none_or(|s| c.last < s));
                }
            }

        }
    }

    #[test]
    fn a_suffix_of_an_empty_blob_is_unsatisfiable() {
        // Found by the range property: `bytes=-5` of 0 bytes was the empty span 0..0, sent as
        // `206` with `Content-Range: bytes 0--1/0`.
        let e = ByteRange::Suffix(5).resolve(0).unwrap_err();
        assert_eq!(e.kind, Kind::RangeNotSatisfiable { size: Some(0) });
    }
}
