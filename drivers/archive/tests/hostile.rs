//! Hostile and malformed layers: each must be refused with a one-line
//! message, and nothing outside the root may change.

mod common;

use common::*;
use drivers_api::ErrorKind;
use drivers_archive::{ApplyOptions, Error, Problem};

/// `a/../../outside/canary` and `../outside/x` climb out of the root.
#[test]
fn dotdot_traversal() {
    let sb = Sandbox::new();
    for name in [
        &b"a/../../outside/canary"[..],
        b"../outside/new",
        b"ok/../..",
        b"x/..",
    ] {
        let tar = Tar::new()
            .add(Entry::dir("a"))
            .add(Entry::file(name, "pwned\n"))
            .finish();
        let msg = assert_refused(apply(&tar, &sb.full()), Problem::ClimbsOut);
        assert!(
            msg.contains(&format!("{:?}", std::str::from_utf8(name).unwrap())),
            "{msg}"
        );
    }
    let msg = assert_refused(
        apply(
            &Tar::new().add(Entry::file("a/../../etc/x", "x")).finish(),
            &sb.full(),
        ),
        Problem::ClimbsOut,
    );
    assert_eq!(
        msg,
        r#"layer entry "a/../../etc/x": path climbs out of the layer root"#
    );
    sb.assert_outside_untouched();
}

/// An absolute name is refused even when it names the canary exactly.
#[test]
fn absolute_path() {
    let sb = Sandbox::new();
    let tar = Tar::new()
        .add(Entry::file(sb.canary_abs(), "pwned\n"))
        .finish();
    assert_refused(apply(&tar, &sb.full()), Problem::Absolute);
    let tar = Tar::new().add(Entry::dir("/")).finish();
    assert_refused(apply(&tar, &sb.full()), Problem::Absolute);
    sb.assert_outside_untouched();
}

/// A symlink planted by an earlier entry cannot be written through,
/// whether it points outside (relative or absolute) or inside the root.
#[test]
fn symlink_then_write_through() {
    let sb = Sandbox::new();
    let abs_outside = sb.outside.to_str().unwrap().to_owned();
    for target in ["../outside", abs_outside.as_str(), "sub"] {
        for second in [
            Entry::file("evil/canary", "pwned\n"),
            Entry::dir("evil/newdir"),
            Entry::symlink("evil/link", "x"),
            Entry::device("evil/null", b'3', 1, 3),
            Entry::file("evil/sub/inner", "pwned\n"),
        ] {
            let tar = Tar::new()
                .add(Entry::dir("sub"))
                .add(Entry::symlink("evil", target))
                .add(second)
                .finish();
            assert_refused(apply(&tar, &sb.full()), Problem::ThroughSymlink);
        }
    }
    sb.assert_outside_untouched();
}

/// A symlink already in the root (a lower layer's, in Full mode) cannot be
/// written, whited out or emptied through.
#[test]
fn existing_symlink_in_root() {
    let sb = Sandbox::new();
    std::os::unix::fs::symlink("../outside", sb.root.join("evil")).unwrap();
    for (entry, problem) in [
        (
            Entry::file("evil/canary", "pwned\n"),
            Problem::ThroughSymlink,
        ),
        (Entry::whiteout("evil/.wh.canary"), Problem::ThroughSymlink),
        (
            Entry::whiteout("evil/.wh..wh..opq"),
            Problem::ThroughSymlink,
        ),
        (
            Entry::hardlink("stolen", "evil/canary"),
            Problem::LinkThroughSymlink,
        ),
    ] {
        let tar = Tar::new().add(entry).finish();
        assert_refused(apply(&tar, &sb.full()), problem);
    }
    sb.assert_outside_untouched();
}

/// OverlayUpper: a symlink in a LOWER layer is a symlink of the merged
/// tree: entries, whiteouts, opaque markers and hardlink targets below it
/// are refused. A directory this layer puts over it hides it.
#[test]
fn lower_symlink_then_write_through() {
    let sb = Sandbox::new();
    let lower = sb.dir("lower1");
    for name in ["evil", "evil2", "hidden"] {
        std::os::unix::fs::symlink("../outside", lower.join(name)).unwrap();
    }
    let before = snapshot(&lower);
    let target = sb.overlay(std::slice::from_ref(&lower));
    for (entry, problem) in [
        (
            Entry::file("evil/canary", "pwned\n"),
            Problem::ThroughSymlink,
        ),
        (Entry::dir("evil/sub/deeper"), Problem::ThroughSymlink),
        (
            Entry::whiteout("evil/.wh..wh..opq"),
            Problem::ThroughSymlink,
        ),
        (Entry::whiteout("evil2/.wh.canary"), Problem::ThroughSymlink),
        (
            Entry::whiteout("evil2/sub/.wh.inner"),
            Problem::ThroughSymlink,
        ),
        (
            Entry::hardlink("stolen", "evil/canary"),
            Problem::LinkThroughSymlink,
        ),
        (
            Entry::hardlink("stolen", "evil/sub/inner"),
            Problem::LinkThroughSymlink,
        ),
    ] {
        let tar = Tar::new().add(entry).finish();
        assert_refused(apply(&tar, &target), problem);
    }
    assert!(!exists(&sb.root.join("evil")) && !exists(&sb.root.join("evil2")));
    let tar = Tar::new()
        .add(Entry::dir("hidden"))
        .add(Entry::file("hidden/canary", "mine\n"))
        .add(Entry::file("hidden/sub/inner", "mine\n"))
        .finish();
    apply(&tar, &target).unwrap();
    assert_eq!(read(&sb.root.join("hidden/sub/inner")), "mine\n");
    assert_eq!(snapshot(&lower), before, "a lower layer was modified");
    sb.assert_outside_untouched();
}

/// Hardlink targets with `..` are refused; the canary gains no link.
#[test]
fn hardlink_to_dotdot() {
    let sb = Sandbox::new();
    for target in ["../outside/canary", "a/../../outside/canary", "a/.."] {
        let tar = Tar::new()
            .add(Entry::dir("a"))
            .add(Entry::hardlink("x", target))
            .finish();
        assert_refused(apply(&tar, &sb.full()), Problem::LinkClimbsOut);
    }
    assert_eq!(meta(&sb.outside.join("canary")).nlink(), 1);
    sb.assert_outside_untouched();
}

/// Absolute hardlink targets are refused, even naming the canary exactly.
#[test]
fn hardlink_to_absolute_path() {
    let sb = Sandbox::new();
    for target in [sb.canary_abs(), b"/etc/passwd".to_vec()] {
        let tar = Tar::new().add(Entry::hardlink("x", target)).finish();
        assert_refused(apply(&tar, &sb.full()), Problem::LinkAbsolute);
    }
    assert_eq!(meta(&sb.outside.join("canary")).nlink(), 1);
    sb.assert_outside_untouched();
}

/// A hardlink target reached through a symlink is refused.
#[test]
fn hardlink_through_symlink() {
    let sb = Sandbox::new();
    let tar = Tar::new()
        .add(Entry::symlink("evil", "../outside"))
        .add(Entry::hardlink("x", "evil/canary"))
        .finish();
    assert_refused(apply(&tar, &sb.full()), Problem::LinkThroughSymlink);
    assert_eq!(meta(&sb.outside.join("canary")).nlink(), 1);
    sb.assert_outside_untouched();
}

/// Whiteouts naming `..` or `.`, and a bare `.wh.`.
#[test]
fn whiteout_naming_dotdot() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.root.join("sub")).unwrap();
    for name in [
        &b".wh..."[..],
        b"sub/.wh...",
        b"sub/.wh..",
        b".wh.",
        b"sub/.wh.",
    ] {
        let tar = Tar::new().add(Entry::whiteout(name)).finish();
        assert_refused(apply(&tar, &sb.full()), Problem::InvalidWhiteout);
    }
    let tar = Tar::new()
        .add(Entry::whiteout("sub/../../.wh.outside"))
        .finish();
    assert_refused(apply(&tar, &sb.full()), Problem::ClimbsOut);
    assert!(sb.root.join("sub").is_dir());
    sb.assert_outside_untouched();
}

/// Device nodes are held to the same rules as files.
#[test]
fn device_via_dotdot() {
    let sb = Sandbox::new();
    for (name, problem) in [
        (b"../outside/null".to_vec(), Problem::ClimbsOut),
        (
            sb.outside
                .join("null")
                .as_os_str()
                .as_encoded_bytes()
                .to_vec(),
            Problem::Absolute,
        ),
    ] {
        let tar = Tar::new().add(Entry::device(name, b'3', 1, 3)).finish();
        assert_refused(apply(&tar, &sb.full()), problem);
    }
    let tar = Tar::new()
        .add(Entry::symlink("d", "../outside"))
        .add(Entry::device("d/blk", b'4', 7, 0))
        .finish();
    assert_refused(apply(&tar, &sb.full()), Problem::ThroughSymlink);
    sb.assert_outside_untouched();
}

/// A size field larger than the data that follows.
#[test]
fn size_larger_than_data() {
    let sb = Sandbox::new();
    let tar = Tar::new()
        .add(Entry::file("big", "only ten b").size_field(4096))
        .finish();
    let msg = assert_refused(
        apply(&tar, &sb.full()),
        Problem::Truncated {
            expected: 4096,
            actual: 1536,
        },
    );
    assert!(msg.contains(r#""big""#), "{msg}");
    // The same with nothing after the data: no padding, no end blocks.
    let mut t = Tar::new();
    t.add_unpadded(Entry::file("big", "only ten b").size_field(4096));
    assert_refused(
        apply(&t.0, &sb.full()),
        Problem::Truncated {
            expected: 4096,
            actual: 10,
        },
    );
    sb.assert_outside_untouched();
}

fn two_files() -> Vec<u8> {
    let mut data = vec![0u8; 300_000];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i * 7919 % 251) as u8;
    }
    Tar::new()
        .add(Entry::file("one", &data))
        .add(Entry::file("two", "second\n"))
        .finish()
}

/// A gzip stream cut short is refused as corrupt, wherever it is cut.
#[test]
fn truncated_gzip() {
    let sb = Sandbox::new();
    let gz = gzip(&two_files());
    for cut in [gz.len() / 2, gz.len() - 4, gz.len() - 1] {
        let e = apply(&gz[..cut], &sb.full()).unwrap_err();
        assert!(
            matches!(e, Error::Corrupt { .. }),
            "cut at {cut}: {}",
            chain(&e)
        );
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(!chain(&e).contains('\n'));
    }
    sb.assert_outside_untouched();
}

/// A zstd stream cut short is refused as corrupt, wherever it is cut.
#[test]
fn truncated_zstd() {
    let sb = Sandbox::new();
    let zs = zstd(&two_files());
    for cut in [zs.len() / 2, zs.len() - 1] {
        let e = apply(&zs[..cut], &sb.full()).unwrap_err();
        assert!(
            matches!(e, Error::Corrupt { .. }),
            "cut at {cut}: {}",
            chain(&e)
        );
        assert_eq!(e.kind(), ErrorKind::Invalid);
    }
    sb.assert_outside_untouched();
}

/// A stream cut inside a header (or its PAX records) is refused; so is one
/// cut inside an entry's data.
#[test]
fn stream_cut_inside_header() {
    let sb = Sandbox::new();
    let tar = Tar::new()
        .add(Entry::file("one", "first\n"))
        .add(Entry::file("two", "second\n").pax("mtime", "1.5"))
        .finish();
    // one: header 0..512, data 512..1024; PAX header 1024..1536, records
    // 1536..2048; two: header 2048..2560.
    for cut in [100, 1024 + 100, 1536 + 10, 2048 + 300] {
        let e = apply(&tar[..cut], &sb.full()).unwrap_err();
        assert!(
            matches!(e, Error::Truncated { .. }),
            "cut at {cut}: {}",
            chain(&e)
        );
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(!chain(&e).contains('\n'));
    }
    // Cut inside the data of `one`.
    assert_refused(
        apply(&tar[..515], &sb.full()),
        Problem::Truncated {
            expected: 6,
            actual: 3,
        },
    );
    sb.assert_outside_untouched();
}

/// The digest of the raw input is checked over the whole stream.
#[test]
fn digest_mismatch() {
    let sb = Sandbox::new();
    let gz = gzip(&two_files());
    let wrong = format!("sha256:{}", "0".repeat(64));
    let opts = ApplyOptions {
        expected_digest: Some(wrong.clone()),
        expected_diff_id: None,
        ..Default::default()
    };
    let e = drivers_archive::apply(&gz[..], &sb.full(), &opts).unwrap_err();
    assert!(
        matches!(&e, Error::DigestMismatch { what: "digest", .. }),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "layer digest mismatch: expected {wrong}, got {}",
            sha256(&gz)
        )
    );
    assert_eq!(e.kind(), ErrorKind::Invalid);

    let opts = ApplyOptions {
        expected_digest: Some("md5:00".into()),
        expected_diff_id: None,
        ..Default::default()
    };
    let e = drivers_archive::apply(&gz[..], &sb.full(), &opts).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidOption {
                field: "expected_digest",
                ..
            }
        ),
        "{e}"
    );
    sb.assert_outside_untouched();
}

/// The diff_id of the uncompressed tar is checked, trailing bytes included.
#[test]
fn diff_id_mismatch() {
    let sb = Sandbox::new();
    let tar = two_files();
    let gz = gzip(&tar);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let opts = ApplyOptions {
        expected_digest: Some(sha256(&gz)),
        expected_diff_id: Some(wrong.clone()),
        ..Default::default()
    };
    let e = drivers_archive::apply(&gz[..], &sb.full(), &opts).unwrap_err();
    assert!(
        matches!(
            &e,
            Error::DigestMismatch {
                what: "diff_id",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "layer diff_id mismatch: expected {wrong}, got {}",
            sha256(&tar)
        )
    );
    assert_eq!(e.kind(), ErrorKind::Invalid);
    let opts = ApplyOptions {
        expected_digest: None,
        expected_diff_id: Some(sha256(&tar).to_uppercase().replace("SHA256", "sha256")),
        ..Default::default()
    };
    drivers_archive::apply(&gz[..], &sb.full(), &opts)
        .expect("hex digits compare case-insensitively");
    sb.assert_outside_untouched();
}

/// A header whose checksum does not match is refused.
#[test]
fn header_checksum_error() {
    let sb = Sandbox::new();
    let mut tar = Tar::new()
        .add(Entry::file("one", "first\n"))
        .add(Entry::file("two", "second\n"))
        .finish();
    tar[1024 + 1] ^= 0x20; // second header's name
    let e = apply(&tar, &sb.full()).unwrap_err();
    assert!(matches!(e, Error::Malformed { .. }), "{}", chain(&e));
    assert_eq!(
        e.to_string(),
        r#"layer tar is malformed after entry "one": archive header checksum mismatch"#
    );
    sb.assert_outside_untouched();
}

/// NUL bytes can only reach a name through PAX or GNU long names: refused.
#[test]
fn nul_in_names() {
    let sb = Sandbox::new();
    let tar = Tar::new()
        .add(Entry::file("x", "x").pax("path", b"a\0b"))
        .finish();
    assert_refused(apply(&tar, &sb.full()), Problem::NulByte);
    let tar = Tar::new()
        .add(Entry::hardlink("x", "y").pax("linkpath", b"a\0b"))
        .finish();
    assert_refused(apply(&tar, &sb.full()), Problem::LinkInvalid);
    let tar = Tar::new()
        .add(Entry::symlink("x", "y").pax("linkpath", b"a\0b"))
        .finish();
    assert_refused(apply(&tar, &sb.full()), Problem::BadSymlinkTarget);
    sb.assert_outside_untouched();
}

/// Extended headers are not buffered without bound.
#[test]
fn oversized_pax_header() {
    let sb = Sandbox::new();
    let tar = Tar::new()
        .add(Entry::file("x", "x").pax("comment", vec![b'a'; 17 << 20]))
        .finish();
    let e = apply(&tar, &sb.full()).unwrap_err();
    assert!(matches!(e, Error::Malformed { .. }), "{}", chain(&e));
    assert!(
        e.to_string().contains("extended headers exceed 16 MiB"),
        "{e}"
    );
}

/// Replacing a symlink that points outside with a file, directory or
/// device replaces the link itself: the canary is never followed.
#[test]
fn entries_over_symlinks_replace_them() {
    let sb = Sandbox::new();
    let tar = Tar::new()
        .add(Entry::symlink("f", "../outside/canary"))
        .add(Entry::file("f", "mine\n").mode(0o4777).owner(1234, 1234))
        .add(Entry::symlink("d", "../outside"))
        .add(
            Entry::dir("d")
                .mode(0o777)
                .owner(1234, 1234)
                .pax("SCHILY.xattr.user.x", "y"),
        )
        .add(Entry::symlink("n", "../outside/canary"))
        .add(Entry::device("n", b'6', 0, 0).mode(0o777))
        .add(Entry::symlink("h", "../outside/canary"))
        .add(Entry::hardlink("h2", "h"))
        .finish();
    apply(&tar, &sb.full()).unwrap();
    assert_eq!(read(&sb.root.join("f")), "mine\n");
    assert!(meta(&sb.root.join("d")).is_dir());
    assert!(
        meta(&sb.root.join("h2")).file_type().is_symlink(),
        "a hardlink to a symlink is the symlink"
    );
    sb.assert_outside_untouched();
}

/// Other malformed entries.
#[test]
fn malformed_entries() {
    let sb = Sandbox::new();
    let cases = [
        (Entry::file(".", "x"), Problem::ReplacesRoot),
        (Entry::file("./", "x"), Problem::ReplacesRoot),
        (Entry::symlink("l", ""), Problem::BadSymlinkTarget),
        (
            Entry::file("v", "").mode(0o644).pax("uid", "4294967296"),
            Problem::IdOutOfRange(4294967296),
        ),
        (
            Entry::file("v", "x").pax("mtime", "soon"),
            Problem::BadPax("bad mtime"),
        ),
        (
            Entry::file("x", "")
                .pax("GNU.sparse.major", "2")
                .pax("GNU.sparse.minor", "0"),
            Problem::BadSparse("unknown GNU sparse version"),
        ),
        (
            Entry::new_raw_type("v", b'V'),
            Problem::UnsupportedType(b'V'),
        ),
        (Entry::hardlink("self", "self"), Problem::LinkMissing),
        (
            Entry::file("p", "x").pax("path", "a").pax("path", "b"),
            Problem::BadPax("duplicate record"),
        ),
        (
            Entry::file("p", "x").pax("size", "+1"),
            Problem::BadPax("bad number"),
        ),
        (
            Entry::file("p", "x").pax("uid", "1x"),
            Problem::BadPax("bad number"),
        ),
        (Entry::hardlink("x", "."), Problem::LinkInvalid),
    ];
    for (entry, problem) in cases {
        let tar = Tar::new().add(entry).finish();
        assert_refused(apply(&tar, &sb.full()), problem);
    }
    sb.assert_outside_untouched();
}

trait RawType {
    fn new_raw_type(name: &str, ty: u8) -> Entry;
}

impl RawType for Entry {
    fn new_raw_type(name: &str, ty: u8) -> Entry {
        let mut e = Entry::file(name, "");
        e.ty = ty;
        e
    }
}

use std::os::unix::fs::MetadataExt;
