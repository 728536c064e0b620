//! cosign's signature format, read: the tag scheme (`sha256-<hex>.sig` beside the image), its
//! manifest's layers (each a simple-signing payload, its signature in an annotation; a keyless
//! one also its certificate, chain and Rekor entry), and the payload's claim
//! (`critical.image.docker-manifest-digest`). Pure: the bytes come from the
//! mirror, the verdict from the parent.
//!
//! Rule of dependency: uses `oci` only (and base64, serde_json).

use base64::Engine as _;

use crate::oci::{Digest, Tag};

/// The media type of a simple-signing payload layer.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding a layer's signature (base64).
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Keyless: the signer's certificate (PEM).
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
/// Keyless: the certificate's intermediates and root (PEM), as the signer had them.
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";
/// Keyless: the Rekor entry, with its signed entry timestamp (JSON).
pub const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";
/// Largest payload read: simple-signing payloads are a few hundred bytes.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Most signatures looked at for one digest.
pub const MAX_SIGNATURES: usize = 32;

/// cosign's tag for the signatures of `digest`: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> Tag {
    format!("{}-{}.sig", Digest::ALGORITHM, digest.hex())
        .parse()
        .expect("sha256-<64 hex>.sig is a valid tag")
}

/// One signature layer of a `.sig` manifest: where its payload is, and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    pub payload: Digest,
    pub size: u64,
    /// The decoded signature; `None` when the annotation is missing or not base64.
    pub signature: Option<Vec<u8>>,
    /// A keyless signature's certificate and log entry; `None` for a signature by a key.
    pub keyless: Option<KeylessAnnotations>,
}

/// The annotations of a keyless signature layer, as written (read by `keyless`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeylessAnnotations {
    pub certificate: String,
    pub chain: Option<String>,
    pub bundle: Option<String>,
}

/// The simple-signing layers of a `.sig` manifest (at most [`MAX_SIGNATURES`]). Layers of other
/// types, or without a usable digest, are skipped. `None` if it is not a manifest with layers.
pub fn signature_layers(manifest: &[u8]) -> Option<Vec<SignatureLayer>> {
    let v: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    let layers = v.get("layers")?.as_array()?;
    Some(
        layers
            .iter()
            .filter(|l| l.get("mediaType").and_then(|t| t.as_str()) == Some(SIMPLE_SIGNING))
            .filter_map(|l| {
                let payload: Digest = l.get("digest")?.as_str()?.parse().ok()?;
                let size = l.get("size")?.as_u64()?;
                let annotation = |name: &str| {
                    l.pointer(&format!("/annotations/{}", name.replace('/', "~1")))
                        .and_then(|s| s.as_str())
                        .map(str::to_owned)
                };
                let signature = annotation(SIGNATURE_ANNOTATION).and_then(|s| {
                    base64::engine::general_purpose::STANDARD
                        .decode(s.trim())
                        .ok()
                });
                let keyless =
                    annotation(CERTIFICATE_ANNOTATION).map(|certificate| KeylessAnnotations {
                        certificate,
                        chain: annotation(CHAIN_ANNOTATION),
                        bundle: annotation(BUNDLE_ANNOTATION),
                    });
                Some(SignatureLayer {
                    payload,
                    size,
                    signature,
                    keyless,
                })
            })
            .take(MAX_SIGNATURES)
            .collect(),
    )
}

/// Whether a simple-signing payload claims `digest`: its `critical.image.docker-manifest-digest`
/// is that digest and its `critical.type` a container signature. Otherwise what it claims.
pub fn payload_claims(payload: &[u8], digest: &Digest) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|_| "its payload is not JSON".to_owned())?;
    let critical = v
        .get("critical")
        .ok_or_else(|| "its payload has no \"critical\" section".to_owned())?;
    let kind = critical
        .pointer("/type")
        .and_then(|t| t.as_str())
        .unwrap_or("");
    if !kind.eq_ignore_ascii_case("cosign container image signature")
        && !kind.eq_ignore_ascii_case("atomic container signature")
    {
        return Err(format!(
            "its payload is of type {kind:?}, not a container signature"
        ));
    }
    match critical
        .pointer("/image/docker-manifest-digest")
        .and_then(|d| d.as_str())
    {
        Some(d) if d == digest.to_string() => Ok(()),
        Some(d) => Err(format!("it signs {}, not this digest", clip(d))),
        None => Err("its payload names no docker-manifest-digest".to_owned()),
    }
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_scheme_and_its_layers() {
        let d = Digest::of(b"image");
        assert_eq!(
            signature_tag(&d).as_str(),
            format!("sha256-{}.sig", d.hex())
        );
        let payload = Digest::of(b"payload");
        let manifest = format!(
            r#"{{"schemaVersion":2,"layers":[
                {{"mediaType":"{SIMPLE_SIGNING}","digest":"{payload}","size":7,"annotations":{{"{SIGNATURE_ANNOTATION}":"c2ln"}}}},
                {{"mediaType":"{SIMPLE_SIGNING}","digest":"{payload}","size":7,"annotations":{{"{SIGNATURE_ANNOTATION}":"%%%","{CERTIFICATE_ANNOTATION}":"cert","{BUNDLE_ANNOTATION}":"{{}}"}}}},
                {{"mediaType":"application/other","digest":"{payload}","size":7}},
                {{"mediaType":"{SIMPLE_SIGNING}","digest":"md5:00","size":7}}
            ]}}"#
        );
        let layers = signature_layers(manifest.as_bytes()).unwrap();
        assert_eq!(
            layers,
            vec![
                SignatureLayer {
                    payload: payload.clone(),
                    size: 7,
                    signature: Some(b"sig".to_vec()),
                    keyless: None,
                },
                SignatureLayer {
                    payload,
                    size: 7,
                    signature: None,
                    keyless: Some(KeylessAnnotations {
                        certificate: "cert".into(),
                        chain: None,
                        bundle: Some("{}".into()),
                    }),
                },
            ]
        );
        assert_eq!(signature_layers(b"{}"), None);
        assert_eq!(signature_layers(b"nope"), None);
    }

    #[test]
    fn a_payload_claims_one_digest() {
        let d = Digest::of(b"image");
        let p = |kind: &str, digest: &str| {
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"r"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"{kind}"}},"optional":null}}"#
            )
        };
        let me = d.to_string();
        assert_eq!(
            payload_claims(p("cosign container image signature", &me).as_bytes(), &d),
            Ok(())
        );
        assert_eq!(
            payload_claims(p("atomic container signature", &me).as_bytes(), &d),
            Ok(())
        );
        let other = Digest::of(b"other").to_string();
        let e = payload_claims(p("cosign container image signature", &other).as_bytes(), &d)
            .unwrap_err();
        assert!(e.contains("not this digest"), "{e}");
        let e = payload_claims(p("something else", &me).as_bytes(), &d).unwrap_err();
        assert!(e.contains("not a container signature"), "{e}");
        assert!(payload_claims(b"[]", &d).is_err());
        assert!(payload_claims(b"{}", &d).is_err());
    }
}
