//! `berth verify`: the library pass (what it reports and moves) and the command's exit codes.

use std::path::{Path, PathBuf};
use std::process::Command;

use berth::oci::Digest;
use berth::verify::{self, Reason};

/// A store under `root` with three good blobs, one with a flipped byte, one file that is not named
/// by a digest, and a temp file left by a writer that is gone.
struct Seeded {
    good: Vec<PathBuf>,
    corrupted: PathBuf,
    corrupted_actual: Digest,
    misnamed: PathBuf,
    leftover: PathBuf,
}

fn seed(root: &Path) -> Seeded {
    let blobs = root.join("blobs/sha256");
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    let mut good = Vec::new();
    for i in 0..3u8 {
        let data: Vec<u8> = (0..100_000u32).map(|j| (j as u8) ^ i).collect();
        let path = blobs.join(Digest::of(&data).hex());
        std::fs::write(&path, &data).unwrap();
        good.push(path);
    }
    let mut data = b"a layer that will rot on disk".repeat(1000);
    let corrupted = blobs.join(Digest::of(&data).hex());
    data[1234] ^= 0x01;
    std::fs::write(&corrupted, &data).unwrap();
    let misnamed = blobs.join("not-a-digest");
    std::fs::write(&misnamed, b"whatever").unwrap();
    // A pid above Linux's pid_max: no process has it.
    let leftover = tmp.join(format!("{}.99999999.3.part", "c".repeat(64)));
    std::fs::write(&leftover, b"half a blob").unwrap();
    Seeded {
        good,
        corrupted,
        corrupted_actual: Digest::of(&data),
        misnamed,
        leftover,
    }
}

fn quarantine_names(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn verify_quarantines_exactly_the_bad_files_and_clears_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = seed(root);
    let good_bytes: u64 = s
        .good
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let bad_bytes = std::fs::metadata(&s.corrupted).unwrap().len() + 8;

    let r = verify::run(root).unwrap();
    assert_eq!(r.checked, 5);
    assert_eq!(r.ok, 3);
    assert_eq!(r.bytes, good_bytes + bad_bytes);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.exit_code(), 1);

    let mut moved: Vec<_> = r
        .quarantined
        .iter()
        .map(|q| (q.from.clone(), q.to.clone(), q.reason.clone()))
        .collect();
    moved.sort_by(|a, b| a.0.cmp(&b.0));
    let corrupted_name = s.corrupted.file_name().unwrap();
    let mut want = vec![
        (
            s.corrupted.clone(),
            root.join("quarantine").join(corrupted_name),
            Reason::Mismatch {
                actual: s.corrupted_actual.clone(),
            },
        ),
        (
            s.misnamed.clone(),
            root.join("quarantine/not-a-digest"),
            Reason::BadName,
        ),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(moved, want);

    // On disk: the good blobs stay, the bad ones moved with their names, the leftover is gone.
    for p in &s.good {
        assert!(p.exists(), "{} removed", p.display());
    }
    assert!(!s.corrupted.exists() && !s.misnamed.exists());
    let mut names = vec![
        corrupted_name.to_str().unwrap().to_owned(),
        "not-a-digest".to_owned(),
    ];
    names.sort();
    assert_eq!(quarantine_names(root), names);
    assert_eq!(r.temp_removed, vec![s.leftover.clone()]);
    assert!(!s.leftover.exists());

    let text = r.to_string();
    for needle in [
        "files checked: 5",
        "ok: 3",
        "quarantined: 2",
        "temp files removed: 1",
        "not-a-digest",
        &s.corrupted_actual.to_string(),
    ] {
        assert!(text.contains(needle), "report lacks {needle}: {text}");
    }

    // A second pass finds a clean store.
    let again = verify::run(root).unwrap();
    assert_eq!((again.checked, again.ok, again.exit_code()), (3, 3, 0));
    assert!(again.quarantined.is_empty() && again.temp_removed.is_empty());
}

#[test]
fn verify_checks_manifest_media_types_and_removes_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let blobs = root.join("blobs/sha256");
    let types = root.join("manifests/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&types).unwrap();
    let manifest = |n: u8| {
        let bytes = format!(r#"{{"schemaVersion":2,"n":{n}}}"#);
        let d = Digest::of(bytes.as_bytes());
        std::fs::write(blobs.join(d.hex()), bytes).unwrap();
        d
    };
    let good = manifest(1);
    std::fs::write(
        types.join(good.hex()),
        "application/vnd.oci.image.manifest.v1+json\n",
    )
    .unwrap();
    let garbled = manifest(2);
    std::fs::write(types.join(garbled.hex()), b"\x00\xffnot a type").unwrap();
    let orphan = Digest::of(b"evicted manifest");
    std::fs::write(types.join(orphan.hex()), "application/json").unwrap();
    std::fs::write(types.join("stray"), "application/json").unwrap();
    // A type being written by a running berth right now: left alone.
    let writing = types.join(format!(".{}.tmp", good.hex()));
    std::fs::write(&writing, "application/vnd.oci.image.index.v1+json").unwrap();

    let r = verify::run(root).unwrap();
    assert_eq!(r.media_types, 4);
    assert_eq!(r.orphans_removed, vec![types.join(orphan.hex())]);
    let mut moved: Vec<_> = r
        .quarantined
        .iter()
        .map(|q| (q.from.clone(), q.reason.clone()))
        .collect();
    moved.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = vec![
        (types.join(garbled.hex()), Reason::BadMediaType),
        (types.join("stray"), Reason::BadName),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(moved, want);
    assert_eq!(r.exit_code(), 1);
    assert!(types.join(good.hex()).exists() && writing.exists());
    assert!(r.to_string().contains("orphan media types removed: 1"));
    // The manifest blobs themselves are fine and stay.
    assert_eq!((r.checked, r.ok), (2, 2));

    let again = verify::run(root).unwrap();
    assert_eq!((again.media_types, again.exit_code()), (1, 0));
    assert!(again.orphans_removed.is_empty());
}

fn berth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berth"))
}

/// A config whose storage is `root`.
fn config(dir: &Path, root: &Path) -> PathBuf {
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[storage]\npath = \"{}\"\n[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n",
            root.display()
        ),
    )
    .unwrap();
    path
}

fn verify_cli(cfg: &Path) -> (Option<i32>, String, String) {
    let out = berth()
        .args(["verify", "--config"])
        .arg(cfg)
        .env_remove("BERTH_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn verify_command_exits_1_after_quarantining_then_0() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let s = seed(&root);
    let cfg = config(dir.path(), &root);

    let (code, out, err) = verify_cli(&cfg);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("quarantined: 2") && out.contains("temp files removed: 1"),
        "{out}"
    );
    assert!(out.contains(s.corrupted.to_str().unwrap()), "{out}");
    assert!(out.contains(s.leftover.to_str().unwrap()), "{out}");

    let (code, out, err) = verify_cli(&cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("files checked: 3") && out.contains("quarantined: 0"),
        "{out}"
    );
}

#[test]
fn verify_command_exits_2_on_a_bad_config_or_a_missing_store() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[storage]\npath_typo = \"x\"\n").unwrap();
    let (code, _, err) = verify_cli(&bad);
    assert_eq!(code, Some(2));
    assert!(err.contains("path_typo"), "{err}");

    let missing = dir.path().join("no-such-store");
    let (code, _, err) = verify_cli(&config(dir.path(), &missing));
    assert_eq!(code, Some(2));
    assert!(err.contains("no-such-store"), "{err}");
    assert!(!missing.exists(), "verify must not create a store");
}
