//! The house rules of `src/` (shared/STYLE.md), checked on the source itself, so that a change
//! that breaks one fails here and not in a reviewer's memory:
//! - no production file over 800 lines (a room that big is usually two concerns); a file's
//!   trailing `#[cfg(test)] mod tests { .. }` and the `tests.rs`/`testing.rs` files don't count;
//! - no two files import each other (an `impl` living in the wrong file is the usual cause);
//! - no import runs back up the layers: nothing below `http` sees it, `store` knows nothing of
//!   upstreams or fills, `fill` and `cluster` never call the mirror, `config` and `error` are
//!   leaves, and the domain error knows nothing of HTTP statuses.
//!
//! Imports are read from code lines (comments skipped) as `crate::a::b` and `super::a` paths,
//! resolved to the longest path that is a file of its own; a parent `mod.rs` using its children
//! through `mod x;` is the ordinary tree, not a pair.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;

struct File {
    /// Module path: `["store", "s3", "client"]` (`mod.rs` and `lib.rs` name their directory).
    module: Vec<String>,
    /// The code lines before the trailing unit tests, comments dropped.
    code: Vec<String>,
    /// Lines before the trailing unit tests, comments included.
    lines: usize,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The production files of `src/`, by path relative to it.
fn files() -> BTreeMap<String, File> {
    let root = src();
    let mut paths = Vec::new();
    walk(&root, &mut paths);
    let mut files = BTreeMap::new();
    for path in paths {
        let rel = path
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if stem == "tests" || stem == "testing" || rel == "main.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let all: Vec<&str> = text.lines().collect();
        // The unit tests at the end of a file are the file's, not its production code.
        let end = all
            .windows(2)
            .position(|w| {
                w[0].trim() == "#[cfg(test)]" && w[1].trim_end_matches(" {").ends_with("mod tests")
            })
            .unwrap_or(all.len());
        let mut module: Vec<String> = rel
            .trim_end_matches(".rs")
            .split('/')
            .map(str::to_owned)
            .collect();
        if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
            module.pop();
        }
        let code = all[..end]
            .iter()
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(|l| l.to_string())
            .collect();
        files.insert(
            rel,
            File {
                module,
                code,
                lines: end,
            },
        );
    }
    files
}

/// The crate-relative module paths a file names (`crate::x::y`, `super::z`).
fn named_paths(file: &File) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    let parent = &file.module[..file.module.len().saturating_sub(1)];
    for line in &file.code {
        for (prefix, base) in [("crate::", &[][..]), ("super::", parent)] {
            let mut rest = line.as_str();
            while let Some(i) = rest.find(prefix) {
                let before = rest[..i].chars().last();
                rest = &rest[i + prefix.len()..];
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let mut path: Vec<String> = base.to_vec();
                let mut tail = rest;
                loop {
                    let seg: String = tail
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if seg.is_empty() {
                        break;
                    }
                    tail = &tail[seg.len()..];
                    path.push(seg);
                    match tail.strip_prefix("::") {
                        Some(t) => tail = t,
                        None => break,
                    }
                }
                out.insert(path);
            }
        }
    }
    out
}

/// Which files each file imports: each named path resolved to the longest prefix that is a file.
fn imports(files: &BTreeMap<String, File>) -> BTreeMap<&str, BTreeSet<&str>> {
    let by_module: BTreeMap<&[String], &str> = files
        .iter()
        .map(|(rel, f)| (f.module.as_slice(), rel.as_str()))
        .collect();
    let mut edges = BTreeMap::new();
    for (rel, f) in files {
        let mut to = BTreeSet::new();
        for path in named_paths(f) {
            if let Some(target) = (0..=path.len())
                .rev()
                .find_map(|n| by_module.get(&path[..n]).copied())
                && target != rel
            {
                to.insert(target);
            }
        }
        edges.insert(rel.as_str(), to);
    }
    edges
}

#[test]
fn no_production_file_is_over_800_lines() {
    let big: Vec<String> = files()
        .iter()
        .filter(|(_, f)| f.lines > MAX_LINES)
        .map(|(rel, f)| format!("src/{rel}: {} lines", f.lines))
        .collect();
    assert!(big.is_empty(), "split by concern, not by size: {big:#?}");
}

#[test]
fn no_two_files_import_each_other() {
    let files = files();
    let edges = imports(&files);
    let mut pairs = Vec::new();
    for (a, to) in &edges {
        for b in to {
            if a < b && edges.get(b).is_some_and(|back| back.contains(a)) {
                pairs.push(format!("src/{a} <-> src/{b}"));
            }
        }
    }
    assert!(
        pairs.is_empty(),
        "move the impl to its type's file: {pairs:#?}"
    );
}

/// Each rule: files under `below` (a module path prefix) must not import modules under any of
/// `never`.
#[test]
fn no_import_runs_back_up_the_layers() {
    let rules: &[(&str, &[&str])] = &[
        ("error", &["*"]),
        ("config", &["*"]),
        (
            "oci",
            &[
                "access", "admin", "assemble", "cluster", "fill", "http", "mirror", "server",
                "store", "tier", "upstream",
            ],
        ),
        ("mirror", &["http", "server", "assemble", "reload", "admin"]),
        ("fill", &["mirror", "http", "server", "assemble"]),
        ("cluster", &["mirror", "fill", "http", "server", "assemble"]),
        // Node mode and the parent's swarm side: the upstream list, the fleet proof, the tracker
        // and piece tables (over `swarm`, reading blobs through a trait `assemble` fills with the
        // mirror); never the mirror's work itself.
        (
            "fleet",
            &[
                "mirror",
                "fill",
                "store",
                "tier",
                "manifests",
                "http",
                "server",
                "assemble",
                "reload",
            ],
        ),
        ("origins", &["mirror", "fill", "http", "server", "assemble"]),
        (
            "store",
            &[
                "upstream",
                "upstreams",
                "mirror",
                "fill",
                "tier",
                "cluster",
                "http",
                "server",
                "assemble",
                "manifests",
            ],
        ),
        ("tier", &["mirror", "fill", "http", "server", "assemble"]),
        (
            "upstream",
            &[
                "store",
                "mirror",
                "fill",
                "tier",
                "cluster",
                "http",
                "server",
                "assemble",
                "manifests",
            ],
        ),
        (
            "manifests",
            &["upstream", "mirror", "fill", "http", "server", "assemble"],
        ),
        ("admin", &["http", "server", "assemble", "mirror"]),
        (
            "policy",
            &[
                "upstream",
                "mirror",
                "fill",
                "store",
                "http",
                "server",
                "assemble",
                "manifests",
            ],
        ),
        ("reload", &["server", "assemble", "http"]),
        // A client of berth's registry API: never its store or its mirror, never the server.
        (
            "warm",
            &[
                "mirror",
                "fill",
                "store",
                "tier",
                "cluster",
                "manifests",
                "origins",
                "policy",
                "http",
                "server",
                "assemble",
                "admin",
            ],
        ),
        ("http", &["server", "assemble"]),
        // Pure swarm logic and its protocol's types: `oci`, `cluster::ring` (the rendezvous
        // weight) and its own files; the node mode (`fleet`) and the HTTP wiring use it.
        (
            "swarm",
            &[
                "mirror",
                "fill",
                "store",
                "tier",
                "upstream",
                "upstreams",
                "manifests",
                "origins",
                "policy",
                "access",
                "admin",
                "warm",
                "fleet",
                "http",
                "server",
                "assemble",
                "reload",
            ],
        ),
    ];
    let files = files();
    let mut wrong = Vec::new();
    for (rel, f) in &files {
        let Some(top) = f.module.first() else {
            continue;
        };
        for path in named_paths(f) {
            let Some(target) = path.first() else { continue };
            if target == top {
                continue;
            }
            for (below, never) in rules {
                if top == below && (never.contains(&"*") || never.contains(&target.as_str())) {
                    wrong.push(format!("src/{rel} uses crate::{}", path.join("::")));
                }
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "imports running back up: {wrong:#?}");
}

#[test]
fn the_domain_error_knows_nothing_of_http() {
    let text = std::fs::read_to_string(src().join("error.rs")).unwrap();
    for word in ["StatusCode", "http::", "status"] {
        assert!(
            !text
                .lines()
                .any(|l| !l.trim_start().starts_with("//") && l.contains(word)),
            "error.rs names {word}: the HTTP answer is chosen in http::error"
        );
    }
}

/// The rules above read what they check: a file that breaks each one is found. (A checker that
/// parses nothing would pass every tree.)
#[test]
fn the_checks_see_what_they_check() {
    let files = files();
    let mirror = files.get("mirror/mod.rs").expect("mirror/mod.rs is read");
    let named = named_paths(mirror);
    assert!(
        named
            .iter()
            .any(|p| p.first().is_some_and(|m| m == "store")),
        "{named:?}"
    );
    let edges = imports(&files);
    assert!(
        edges["mirror/mod.rs"].contains("store/mod.rs"),
        "{:?}",
        edges["mirror/mod.rs"]
    );
    assert!(edges["store/mod.rs"].contains("index.rs"));
    // `super::` from a child resolves in its parent directory.
    assert!(
        edges["store/pending.rs"]
            .iter()
            .any(|t| t.starts_with("store/")),
        "{:?}",
        edges["store/pending.rs"]
    );
    assert!(files["lib.rs"].lines > 0 && files["mirror/mod.rs"].lines > 50);
}
