//! `POST /admin/warm`: what a warm asks for (its JSON body, read and checked whole before anything
//! is fetched) and what it answers (what `berth warm` prints, as JSON).
//!
//! The body: `{"images": ["nginx:1.25", "quay.io/coreos/flannel:v0.11.0"], "platforms":
//! ["linux/amd64"], "referrers": true}`; `platforms` (default: every platform) and `referrers`
//! (default: false) may be left out, any other key is refused. References and platforms are
//! written as for `berth warm` and parsed by the same code (`warm`); a reference given twice is
//! warmed once. At most [`MAX_IMAGES`] references, and a body of at most [`MAX_BODY`] bytes: one
//! request stays a bounded amount of work (a larger rollout is several requests, one after the
//! other). Any bad reference or platform refuses the whole request, naming each, so nothing is
//! half-warmed from a list with a typo.
//!
//! The answer ([`Warmed`]) is sent whether or not every image warmed; `failed` names each one that
//! did not, with the reason `berth warm` would print.
//!
//! Rule of dependency: a leaf of `admin`; uses `warm` (references, platforms, the summary) and
//! `error`. Running the warm is `http::warm`'s.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::warm::{Failure, ImageRef, Platform, Summary};

/// Most image references one request may name.
pub const MAX_IMAGES: usize = 1000;

/// Largest body accepted: [`MAX_IMAGES`] references of a few hundred bytes each, with room.
pub const MAX_BODY: usize = 1 << 20;

/// Most bad entries named in one refusal (the rest are counted).
const MAX_NAMED: usize = 10;

/// The body as sent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    images: Vec<String>,
    #[serde(default)]
    platforms: Vec<String>,
    #[serde(default)]
    referrers: bool,
}

/// A warm's request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmRequest {
    /// In the order given, each once.
    pub images: Vec<ImageRef>,
    /// Only these platforms of an index; empty: every platform.
    pub platforms: Vec<Platform>,
    /// Each image's referrers (OCI 1.1) and theirs come with it (`berth warm --referrers`).
    pub referrers: bool,
}

impl WarmRequest {
    /// Reads a body; any error is a 400 (`bad request`) that says what is wrong.
    pub fn parse(body: &[u8]) -> Result<WarmRequest, Error> {
        let b: Body = serde_json::from_slice(body).map_err(|e| {
            Error::bad_request(format!(
                "the body is not a warm request ({{\"images\": [...], \"platforms\": [...], \
                 \"referrers\": true}}): {e}"
            ))
        })?;
        if b.images.is_empty() {
            return Err(Error::bad_request(
                "\"images\" is empty: name an image to warm",
            ));
        }
        if b.images.len() > MAX_IMAGES {
            return Err(Error::bad_request(format!(
                "{} images in one request; at most {MAX_IMAGES}: send the rest in another",
                b.images.len()
            )));
        }
        let mut bad = Vec::new();
        let mut images: Vec<ImageRef> = Vec::with_capacity(b.images.len());
        for (i, text) in b.images.iter().enumerate() {
            match text.parse::<ImageRef>() {
                Ok(r) if images.contains(&r) => {}
                Ok(r) => images.push(r),
                Err(e) => bad.push(format!("images[{i}]: {e}")),
            }
        }
        let mut platforms = Vec::with_capacity(b.platforms.len());
        for (i, text) in b.platforms.iter().enumerate() {
            match text.parse::<Platform>() {
                Ok(p) => platforms.push(p),
                Err(e) => bad.push(format!("platforms[{i}]: {e}")),
            }
        }
        if !bad.is_empty() {
            let more = bad.len().saturating_sub(MAX_NAMED);
            bad.truncate(MAX_NAMED);
            if more > 0 {
                bad.push(format!("and {more} more"));
            }
            return Err(Error::bad_request(format!(
                "nothing was warmed: {}",
                bad.join("; ")
            )));
        }
        Ok(WarmRequest {
            images,
            platforms,
            referrers: b.referrers,
        })
    }
}

impl WarmRequest {
    /// The body that asks for this (`berth warm --url`); [`WarmRequest::parse`] reads it back.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "images": self.images.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "platforms": self.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "referrers": self.referrers,
        })
        .to_string()
    }
}

/// What a warm did: `berth warm`'s summary, as the admin API answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Warmed {
    /// References warmed, each with everything it takes, in the order given; written as
    /// `berth warm` writes them (`docker.io/` left out, `:latest` where no tag was given).
    pub warmed: Vec<String>,
    /// References not (wholly) warmed, with why, in the order given.
    pub failed: Vec<WarmFailure>,
    /// Manifests fetched (every platform's, and the referrers').
    pub manifests: usize,
    /// With `"referrers": true`: the referrers warmed with the images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrers: Option<usize>,
    /// Blobs read through berth, each digest once.
    pub blobs: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// One image that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmFailure {
    pub image: String,
    pub reason: String,
}

impl Warmed {
    /// The answer for a run over `images` that ended with `summary`.
    pub fn new(images: &[ImageRef], summary: &Summary) -> Warmed {
        let failed: Vec<WarmFailure> = summary
            .failures
            .iter()
            .map(|(image, why)| WarmFailure {
                image: image.clone(),
                reason: why.to_string(),
            })
            .collect();
        Warmed {
            warmed: images
                .iter()
                .map(ToString::to_string)
                .filter(|r| !failed.iter().any(|f| f.image == *r))
                .collect(),
            failed,
            manifests: summary.manifests,
            referrers: summary.referrers,
            blobs: summary.blobs,
            bytes: summary.bytes,
            seconds: summary.elapsed.as_secs_f64(),
        }
    }
}

impl Warmed {
    /// `berth warm`'s summary of this answer (`berth warm --url` prints it as a local run would).
    pub fn summary(&self) -> Summary {
        Summary {
            images: self.warmed.len() + self.failed.len(),
            images_warmed: self.warmed.len(),
            manifests: self.manifests,
            referrers: self.referrers,
            blobs: self.blobs,
            bytes: self.bytes,
            elapsed: std::time::Duration::from_secs_f64(self.seconds.max(0.0)),
            failures: self
                .failed
                .iter()
                .map(|f| (f.image.clone(), Failure(f.reason.clone())))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    fn refused(body: &str) -> String {
        let e = WarmRequest::parse(body.as_bytes()).unwrap_err();
        assert!(matches!(e.kind, Kind::Invalid(_)), "{e:?}");
        e.detail.unwrap_or_default()
    }

    #[test]
    fn a_body_is_read_whole() {
        let r = WarmRequest::parse(
            br#"{"images": ["nginx:1.25", "quay.io/coreos/flannel:v0.11.0", "docker.io/library/nginx:1.25"], "platforms": ["linux/amd64", "linux/arm/v7"], "referrers": true}"#,
        )
        .unwrap();
        let names: Vec<String> = r.images.iter().map(ToString::to_string).collect();
        // The repository is kept as written (berth adds `library/` itself where its upstream
        // wants it), so `library/nginx` is another reference than `nginx`, as for `berth warm`.
        assert_eq!(
            names,
            [
                "nginx:1.25",
                "quay.io/coreos/flannel:v0.11.0",
                "library/nginx:1.25"
            ]
        );
        assert_eq!(r.platforms.len(), 2);
        assert!(r.referrers);
        assert_eq!(WarmRequest::parse(r.to_json().as_bytes()).unwrap(), r);
        let r = WarmRequest::parse(br#"{"images": ["a", "a:latest"]}"#).unwrap();
        assert_eq!(r.images.len(), 1, "a reference given twice is warmed once");
        assert!(r.platforms.is_empty() && !r.referrers);
    }

    #[test]
    fn a_bad_body_is_refused_saying_why() {
        assert!(refused("not json").contains("the body is not a warm request"));
        assert!(refused(r#"{"image": ["a"]}"#).contains("unknown field `image`"));
        assert!(refused(r#"{"images": "a"}"#).contains("invalid type"));
        assert!(refused(r#"{"images": []}"#).contains("is empty"));
        let d =
            refused(r#"{"images": ["ok:1", "Bad Name", "x@sha256:zz"], "platforms": ["linux"]}"#);
        assert!(d.starts_with("nothing was warmed: images[1]: "), "{d}");
        assert!(
            d.contains("; images[2]: ") && d.contains("; platforms[0]: "),
            "{d}"
        );
        let many: Vec<String> = (0..=MAX_IMAGES).map(|i| format!("\"a{i}\"")).collect();
        let d = refused(&format!(r#"{{"images": [{}]}}"#, many.join(",")));
        assert!(
            d.starts_with("1001 images in one request; at most 1000"),
            "{d}"
        );
        let bad: Vec<&str> = vec!["\"Bad\""; 12];
        let d = refused(&format!(r#"{{"images": [{}]}}"#, bad.join(",")));
        assert!(d.ends_with("; and 2 more"), "{d}");
    }

    #[test]
    fn the_answer_lists_what_warmed_and_what_failed() {
        let images: Vec<ImageRef> = ["a:1", "b:2"].iter().map(|s| s.parse().unwrap()).collect();
        let summary = Summary {
            images: 2,
            images_warmed: 1,
            manifests: 3,
            referrers: Some(1),
            blobs: 4,
            bytes: 500,
            elapsed: std::time::Duration::from_millis(1500),
            failures: vec![("b:2".into(), Failure::new("blob x: received 1 bytes"))],
        };
        let w = Warmed::new(&images, &summary);
        assert_eq!(w.warmed, ["a:1"]);
        assert_eq!(
            w.failed,
            [WarmFailure {
                image: "b:2".into(),
                reason: "blob x: received 1 bytes".into()
            }]
        );
        let json: serde_json::Value = serde_json::to_value(&w).unwrap();
        assert_eq!(json["referrers"], 1);
        assert_eq!(json["seconds"], 1.5);
        let back = w.summary();
        assert_eq!(
            (back.images, back.images_warmed, back.manifests, back.blobs),
            (2, 1, 3, 4)
        );
        assert_eq!(back.to_string(), summary.to_string());
        let without = Warmed::new(&images, &Summary::default());
        assert!(
            serde_json::to_value(&without)
                .unwrap()
                .get("referrers")
                .is_none()
        );
    }
}
