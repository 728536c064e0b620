//! The seeded test images: generated here (no internet), written as skopeo `dir:` copies, pushed
//! into the Distribution registry with `skopeo copy --preserve-digests`, then read back to check
//! the registry serves exactly what was generated.
//!
//! Layers are gzip'd tars of pseudo-random files from a fixed seed, with fixed tar headers, so the
//! same digests come out on every run and machine (flate2's gzip header has no timestamp).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::http;
use super::proc;

pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[derive(Debug, Clone)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
}

impl Blob {
    pub fn hex(&self) -> &str {
        hex_of(&self.digest)
    }
}

/// One platform's image: a manifest, its config and its layers.
#[derive(Debug)]
pub struct Platform {
    pub arch: &'static str,
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

/// A seeded repository tag: a single manifest, or a list/index over several platforms.
#[derive(Debug)]
pub struct Image {
    /// The upstream registry host that holds it (each has its own Distribution registry).
    pub upstream: &'static str,
    pub repo: &'static str,
    pub tag: &'static str,
    /// What the tag resolves to (the list for multi-platform images).
    pub top: Blob,
    pub media_type: &'static str,
    pub platforms: Vec<Platform>,
    /// The skopeo `dir:` copy the registry was seeded from.
    pub dir: PathBuf,
}

impl Image {
    pub fn is_list(&self) -> bool {
        matches!(self.media_type, DOCKER_LIST | OCI_INDEX)
    }

    pub fn platform(&self, arch: &str) -> &Platform {
        self.platforms
            .iter()
            .find(|p| p.arch == arch)
            .unwrap_or_else(|| panic!("{}:{} has no {arch} image", self.repo, self.tag))
    }

    /// `repo:tag`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repo, self.tag)
    }

    /// `upstream/repo:tag`: how a client names it (`berth warm`, `ctr images pull`).
    pub fn full_reference(&self) -> String {
        format!("{}/{}", self.upstream, self.reference())
    }
}

pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The four seeded images, generated once per test process.
pub fn images() -> &'static [Image] {
    static IMAGES: OnceLock<Vec<Image>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-images");
        let _ = std::fs::remove_dir_all(&root);
        generate(&root)
    })
}

pub fn image(repo: &str) -> &'static Image {
    images()
        .iter()
        .find(|i| i.repo == repo)
        .unwrap_or_else(|| panic!("{repo} is not seeded"))
}

/// splitmix64: a fixed, dependency-free stream of pseudo-random bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// Media types for one manifest format.
#[derive(Clone, Copy)]
enum Format {
    Docker,
    Oci,
}

impl Format {
    fn manifest(self) -> &'static str {
        match self {
            Format::Docker => DOCKER_MANIFEST,
            Format::Oci => OCI_MANIFEST,
        }
    }
    fn list(self) -> &'static str {
        match self {
            Format::Docker => DOCKER_LIST,
            Format::Oci => OCI_INDEX,
        }
    }
    fn config(self) -> &'static str {
        match self {
            Format::Docker => DOCKER_CONFIG,
            Format::Oci => OCI_CONFIG,
        }
    }
    fn layer(self) -> &'static str {
        match self {
            Format::Docker => DOCKER_LAYER,
            Format::Oci => OCI_LAYER,
        }
    }
}

/// Writes `bytes` into a `dir:` copy under its hex name.
fn put(dir: &Path, bytes: &[u8]) -> Blob {
    let hex = sha256_hex(bytes);
    std::fs::write(dir.join(&hex), bytes).expect("write blob");
    Blob {
        digest: format!("sha256:{hex}"),
        size: bytes.len() as u64,
    }
}

fn descriptor(media_type: &str, b: &Blob) -> Value {
    json!({"mediaType": media_type, "size": b.size, "digest": b.digest})
}

/// A gzip'd tar holding one pseudo-random file per entry of `sizes`; returns (blob, diff_id).
fn layer(dir: &Path, rng: &mut Rng, n: usize, sizes: &[usize]) -> (Blob, String) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir_header = tar::Header::new_gnu();
    dir_header.set_entry_type(tar::EntryType::Directory);
    dir_header.set_mode(0o755);
    dir_header.set_mtime(1_700_000_000);
    dir_header.set_size(0);
    tar.append_data(&mut dir_header, format!("layer{n}/"), std::io::empty())
        .expect("tar dir");
    for (i, &size) in sizes.iter().enumerate() {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_size(size as u64);
        let data = rng.bytes(size);
        tar.append_data(&mut h, format!("layer{n}/file{i}.bin"), &data[..])
            .expect("tar file");
    }
    let tar = tar.into_inner().expect("tar finish");
    let diff_id = format!("sha256:{}", sha256_hex(&tar));
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).expect("gzip");
    (put(dir, &gz.finish().expect("gzip finish")), diff_id)
}

/// One platform's image in `dir`: layers of the given file sizes, a config, a manifest.
/// Returns it and the manifest bytes.
fn platform(
    dir: &Path,
    format: Format,
    arch: &'static str,
    seed: u64,
    layer_sizes: &[&[usize]],
) -> (Platform, Vec<u8>) {
    let mut rng = Rng(seed);
    let (mut layers, mut diff_ids) = (Vec::new(), Vec::new());
    for (n, sizes) in layer_sizes.iter().enumerate() {
        let (b, d) = layer(dir, &mut rng, n, sizes);
        layers.push(b);
        diff_ids.push(d);
    }
    let mut config = json!({
        "architecture": arch,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": diff_ids.iter().map(|_| json!({"created": "2024-01-01T00:00:00Z",
                                                   "created_by": "berth e2e seed"}))
                           .collect::<Vec<_>>(),
    });
    if arch == "arm64" {
        config["variant"] = json!("v8");
    }
    let config = put(dir, &serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": format.manifest(),
        "config": descriptor(format.config(), &config),
        "layers": layers.iter().map(|l| descriptor(format.layer(), l)).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap();
    let manifest = Blob {
        digest: format!("sha256:{}", sha256_hex(&bytes)),
        size: bytes.len() as u64,
    };
    (
        Platform {
            arch,
            manifest,
            config,
            layers,
        },
        bytes,
    )
}

/// A single-platform OCI image (linux/amd64, one gzip'd tar layer of `layer_size` pseudo-random
/// bytes from `seed`) written into `dir` as blobs named by their hex digest: its platform, and its
/// manifest's bytes. For tests that push images of their own (each seed its own digests).
pub fn oci_image(dir: &Path, seed: u64, layer_size: usize) -> (Platform, Vec<u8>) {
    std::fs::create_dir_all(dir).expect("mkdir");
    platform(dir, Format::Oci, "amd64", seed, &[&[layer_size]])
}

/// What to generate for one repository tag.
struct Spec {
    upstream: &'static str,
    repo: &'static str,
    tag: &'static str,
    format: Format,
    /// A list over amd64 and arm64, or a single amd64 image.
    multi: bool,
    seed: u64,
    /// Per layer, the sizes of the files in it.
    layer_sizes: &'static [&'static [usize]],
}

/// A `dir:` copy of `repo:tag`: one platform (amd64), or a list over amd64 and arm64.
fn build(root: &Path, spec: Spec) -> Image {
    let Spec {
        upstream,
        repo,
        tag,
        format,
        multi,
        seed,
        layer_sizes,
    } = spec;
    let dir = root.join(repo.replace('/', "_"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("version"), "Directory Transport Version: 1.1\n").unwrap();
    let arches: &[&'static str] = if multi {
        &["amd64", "arm64"]
    } else {
        &["amd64"]
    };
    let mut platforms = Vec::new();
    let mut manifests = Vec::new();
    for (i, arch) in arches.iter().enumerate() {
        let (p, bytes) = platform(&dir, format, arch, seed * 100 + i as u64, layer_sizes);
        manifests.push(bytes);
        platforms.push(p);
    }
    let (top, media_type) = if multi {
        let entries: Vec<Value> = platforms
            .iter()
            .map(|p| {
                let mut platform = json!({"architecture": p.arch, "os": "linux"});
                if p.arch == "arm64" {
                    platform["variant"] = json!("v8");
                }
                let mut d = descriptor(format.manifest(), &p.manifest);
                d["platform"] = platform;
                d
            })
            .collect();
        let list = json!({"schemaVersion": 2, "mediaType": format.list(), "manifests": entries});
        let bytes = serde_json::to_vec_pretty(&list).unwrap();
        for (p, m) in platforms.iter().zip(&manifests) {
            // skopeo's dir: transport keeps a list's instances beside it under <hex>.manifest.json.
            std::fs::write(dir.join(format!("{}.manifest.json", p.manifest.hex())), m).unwrap();
        }
        std::fs::write(dir.join("manifest.json"), &bytes).unwrap();
        let hex = sha256_hex(&bytes);
        let top = Blob {
            digest: format!("sha256:{hex}"),
            size: bytes.len() as u64,
        };
        (top, format.list())
    } else {
        std::fs::write(dir.join("manifest.json"), &manifests[0]).unwrap();
        (platforms[0].manifest.clone(), format.manifest())
    };
    Image {
        upstream,
        repo,
        tag,
        top,
        media_type,
        platforms,
        dir,
    }
}

fn generate(root: &Path) -> Vec<Image> {
    const KB: usize = 1024;
    let specs = [
        // dockerd pulls alpine:3.19 for amd64: a Docker manifest list.
        Spec {
            upstream: "docker.io",
            repo: "library/alpine",
            tag: "3.19",
            format: Format::Docker,
            multi: true,
            seed: 1,
            layer_sizes: &[&[300 * KB, 10 * KB]],
        },
        Spec {
            upstream: "docker.io",
            repo: "library/busybox",
            tag: "latest",
            format: Format::Oci,
            multi: true,
            seed: 2,
            layer_sizes: &[&[200 * KB], &[5 * KB]],
        },
        // Several layers, a few KB to a few MB.
        Spec {
            upstream: "quay.io",
            repo: "coreos/flannel",
            tag: "v0.11.0",
            format: Format::Docker,
            multi: false,
            seed: 3,
            layer_sizes: &[
                &[4 * KB],
                &[64 * KB, 1],
                &[512 * KB],
                &[1536 * KB, 100],
                &[3 * 1024 * KB],
            ],
        },
        Spec {
            upstream: "docker.io",
            repo: "team/app",
            tag: "1.0",
            format: Format::Oci,
            multi: false,
            seed: 4,
            layer_sizes: &[&[700 * KB], &[20 * KB]],
        },
    ];
    specs.into_iter().map(|s| build(root, s)).collect()
}

/// An `insecureAcceptAnything` signature policy, so skopeo and podman need nothing in /etc.
pub fn write_policy(path: &Path) {
    std::fs::write(path, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#)
        .expect("write policy.json");
}

/// The images upstream `host` holds.
pub fn images_of(host: &str) -> impl Iterator<Item = &'static Image> + '_ {
    images().iter().filter(move |i| i.upstream == host)
}

/// Pushes `(registry address, image)` pairs, all at once, then checks each registry serves each
/// manifest and blob with the generated digest.
pub fn push(pushes: &[(String, &'static Image)], policy: &Path) {
    let mut children = Vec::new();
    for (addr, img) in pushes {
        let mut cmd = Command::new("skopeo");
        cmd.arg("--policy").arg(policy).args([
            "copy",
            "-q",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ]);
        if img.is_list() {
            cmd.arg("--all");
        }
        cmd.arg(format!("dir:{}", img.dir.display()))
            .arg(format!("docker://{addr}/{}", img.reference()));
        // The four pushes run at once; each is small.
        children.push(std::thread::spawn(move || {
            proc::run(&mut cmd, Duration::from_secs(120));
        }));
    }
    for c in children {
        if let Err(e) = c.join() {
            std::panic::resume_unwind(e);
        }
    }
    for (addr, img) in pushes {
        check_registry_serves(addr, img);
    }
}

fn check_registry_serves(addr: &str, img: &Image) {
    let r = http::get(
        addr,
        &format!("/v2/{}/manifests/{}", img.repo, img.tag),
        Some(http::MANIFEST_TYPES),
    )
    .expect("GET manifest from registry");
    assert_eq!(r.status, 200, "registry: {}", img.reference());
    assert_eq!(
        r.header("docker-content-digest"),
        Some(img.top.digest.as_str()),
        "registry rewrote {}",
        img.reference()
    );
    assert_eq!(format!("sha256:{}", sha256_hex(&r.body)), img.top.digest);
    assert_eq!(r.header("content-type"), Some(img.media_type));
    for p in &img.platforms {
        let m = http::get(
            addr,
            &format!("/v2/{}/manifests/{}", img.repo, p.manifest.digest),
            Some(http::MANIFEST_TYPES),
        )
        .expect("GET manifest");
        assert_eq!(m.status, 200);
        assert_eq!(format!("sha256:{}", sha256_hex(&m.body)), p.manifest.digest);
        for b in std::iter::once(&p.config).chain(&p.layers) {
            let r = http::get(addr, &format!("/v2/{}/blobs/{}", img.repo, b.digest), None)
                .expect("GET blob");
            assert_eq!(r.status, 200, "blob {} of {}", b.digest, img.reference());
            assert_eq!(r.body.len() as u64, b.size);
            assert_eq!(sha256_hex(&r.body), b.hex());
        }
    }
}
