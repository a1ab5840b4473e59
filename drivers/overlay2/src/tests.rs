//! The overlay2 backend: the mount plan as a table (no root needed), then
//! the `Driver` trait end to end with real overlay mounts through both
//! mount APIs (these run as root, as CI does). Every mount is taken off by
//! a guard that also runs when an assertion panics.

use super::*;
use drivers_api::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

fn format_options() -> Vec<String> {
    FORMAT_OPTIONS.iter().map(|s| s.to_string()).collect()
}

/// Every shape of mount: writable or view, over 0, 1 or 2 parents.
#[test]
fn mount_plan_table() {
    let layer = Path::new("/s/layers/x");
    let p = |n: &str| Parent {
        diff: format!("/s/layers/{n}/diff").into(),
        link: format!("/s/l/{n}{n}{n}").into(),
    };
    let (a, b) = (p("a"), p("b"));
    let opts = format_options();
    let upper = Some(OverlayUpper {
        upper: "/s/layers/x/diff".into(),
        work: "/s/layers/x/work".into(),
    });
    let cases: Vec<(bool, Vec<Parent>, Mount)> = vec![
        (
            true,
            vec![],
            Mount::Bind {
                source: "/s/layers/x/diff".into(),
                read_only: false,
            },
        ),
        (
            true,
            vec![a.clone()],
            Mount::Overlay {
                lower: vec!["/s/l/aaa".into()],
                upper: upper.clone(),
                options: opts.clone(),
            },
        ),
        (
            true,
            vec![a.clone(), b.clone()],
            Mount::Overlay {
                lower: vec!["/s/l/aaa".into(), "/s/l/bbb".into()],
                upper,
                options: opts.clone(),
            },
        ),
        (
            false,
            vec![],
            Mount::Bind {
                source: "/s/layers/x/diff".into(),
                read_only: true,
            },
        ),
        (
            false,
            vec![a.clone()],
            Mount::Bind {
                source: "/s/layers/a/diff".into(),
                read_only: true,
            },
        ),
        (
            false,
            vec![a, b],
            Mount::Overlay {
                lower: vec!["/s/l/aaa".into(), "/s/l/bbb".into()],
                upper: None,
                options: opts.clone(),
            },
        ),
    ];
    for (writable, parents, want) in cases {
        assert_eq!(
            mount_plan(layer, writable, &parents, &opts),
            vec![want],
            "writable={writable} parents={}",
            parents.len()
        );
    }
}

/// 500 parents are allowed, 501 are a one-line limit naming 500 and a hint.
#[test]
fn depth_limit() {
    let parents: Vec<LayerId> = (0..=MAX_OVERLAY_DEPTH)
        .map(|i| id(&format!("p{i}")))
        .collect();
    assert!(check_depth(&id("x"), &parents[..MAX_OVERLAY_DEPTH]).is_ok());
    let e = check_depth(&id("x"), &parents).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Limit);
    let msg = e.to_string();
    assert!(
        msg.contains("500") && msg.contains("501") && !msg.contains('\n'),
        "{msg}"
    );
    assert!(e.hint().unwrap().contains("vfs"));
}

/// Options: format options first, user options after; reserved keys and
/// unknown config keys refused.
#[test]
fn config_and_options() {
    let tmp = tempfile::tempdir().unwrap();
    let env = HostEnv {
        state_dir: tmp.path().join("overlay2"),
    };
    let cfg: Config = toml::from_str(r#"mount_options = ["xino=on"]"#).unwrap();
    assert_eq!(cfg.mount_api, None);
    let ovl = Overlay2::open(&env, cfg).unwrap();
    assert_eq!(
        ovl.options,
        ["index=off", "redirect_dir=off", "metacopy=off", "xino=on"]
    );
    for bad in [
        "redirect_dir=on",
        "lowerdir=/x",
        "index=on",
        "metacopy",
        "a,b",
        "",
    ] {
        let cfg = Config {
            mount_options: vec![bad.into()],
            mount_api: None,
            ..Config::default()
        };
        assert_eq!(
            Overlay2::open(&env, cfg).unwrap_err().kind(),
            ErrorKind::Invalid,
            "{bad}"
        );
    }
    let table: toml::Table = toml::from_str("mount_opts = []").unwrap();
    let e = (BACKEND.open)(&env, &table).map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert!(!e.to_string().contains('\n'), "{e}");
    let table: toml::Table = toml::from_str(r#"mount_api = "fsopen""#).unwrap();
    assert_eq!(
        (BACKEND.open)(&env, &table).map(drop).unwrap_err().kind(),
        ErrorKind::Invalid
    );
}

/// A configured mount API reaches the mounter. (The only test that relies
/// on the process-wide choice; the others pass the API explicitly.)
#[test]
fn config_mount_api_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let table: toml::Table = toml::from_str(r#"mount_api = "legacy""#).unwrap();
    (BACKEND.open)(
        &HostEnv {
            state_dir: tmp.path().join("overlay2"),
        },
        &table,
    )
    .unwrap();
    let now = MountApi::current();
    drivers_mount::set_overlay_api(None);
    assert_eq!(now.unwrap(), MountApi::Legacy);
}

struct Fx {
    _tmp: tempfile::TempDir,
    state: PathBuf,
    scratch: PathBuf,
    drv: Box<dyn Driver>,
}

fn fx() -> Fx {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("overlay2");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let drv = (BACKEND.open)(
        &HostEnv {
            state_dir: state.clone(),
        },
        &toml::Table::new(),
    )
    .unwrap();
    Fx {
        _tmp: tmp,
        state,
        scratch,
        drv,
    }
}

/// Unmounts its path when dropped, panicking or not.
struct Mounted(PathBuf);

impl Mounted {
    fn new(mounts: &[Mount], target: PathBuf, api: MountApi) -> Mounted {
        std::fs::create_dir_all(&target).unwrap();
        drivers_mount::mount_with(mounts, &target, api).unwrap();
        Mounted(target)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = drivers_mount::unmount(&self.0) {
            eprintln!("could not unmount {}: {e}", self.0.display());
        }
    }
}

impl Fx {
    fn diff(&self, l: &LayerId) -> PathBuf {
        self.state.join("layers").join(l.as_str()).join("diff")
    }

    /// Prepares `l` over `parents`, writes `files` into its apply target,
    /// commits.
    fn committed(&self, l: &str, parents: &[LayerId], files: &[(&str, &str)]) -> LayerId {
        let l = id(l);
        self.drv
            .prepare(&l, parents, &PrepareOpts::default())
            .unwrap();
        let root = self.drv.apply_target(&l, parents).unwrap().root;
        for (path, content) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        self.drv.commit(&l).unwrap();
        l
    }

    fn names(&self, dir: &str) -> Vec<String> {
        dir_names(&self.state.join(dir)).unwrap()
    }
}

fn mode_owner(p: &Path) -> (u32, u32, u32) {
    let st = std::fs::metadata(p).unwrap();
    (st.mode() & 0o7777, st.uid(), st.gid())
}

/// Prepare, fill, commit, a child showing the parent, a deletion through
/// the mount recorded as a whiteout, commit, a read-only view, removal —
/// through both mount APIs.
#[test]
fn lifecycle_end_to_end() {
    for api in [MountApi::New, MountApi::Legacy] {
        lifecycle(api);
    }
}

fn lifecycle(api: MountApi) {
    let fx = fx();
    let base = id("base");
    let mounts = fx.drv.prepare(&base, &[], &PrepareOpts::default()).unwrap();
    assert_eq!(
        mounts,
        vec![Mount::Bind {
            source: fx.diff(&base),
            read_only: false
        }]
    );
    let target = fx.drv.apply_target(&base, &[]).unwrap();
    assert_eq!(
        target,
        ApplyTarget {
            root: fx.diff(&base),
            format: ApplyFormat::OverlayUpper { lower: vec![] }
        }
    );
    assert_eq!(mode_owner(&target.root), (0o755, 0, 0));
    std::fs::create_dir(target.root.join("etc")).unwrap();
    std::fs::write(target.root.join("etc/motd"), "hi\n").unwrap();
    std::fs::write(target.root.join("etc/keep"), "k\n").unwrap();
    assert!(fx.drv.commit(&base).unwrap().inodes >= 4);
    assert!(
        !fx.state.join("layers/base/work").exists(),
        "commit drops the work dir"
    );

    let child = id("child");
    let parents = [base.clone()];
    let mounts = fx
        .drv
        .prepare(&child, &parents, &PrepareOpts::default())
        .unwrap();
    let short = std::fs::read_to_string(fx.state.join("layers/base/link")).unwrap();
    assert_eq!(short.len(), LINK_LEN);
    let Mount::Overlay {
        lower,
        upper: Some(up),
        options,
    } = &mounts[0]
    else {
        panic!("{mounts:?}")
    };
    assert_eq!(lower, &vec![fx.state.join("l").join(&short)]);
    assert_eq!(up.upper, fx.diff(&child));
    assert_eq!(options, &format_options());
    {
        let m = Mounted::new(&mounts, fx.scratch.join("child"), api);
        assert_eq!(
            std::fs::read_to_string(m.0.join("etc/motd")).unwrap(),
            "hi\n"
        );
        std::fs::remove_file(m.0.join("etc/motd")).unwrap();
        std::fs::write(m.0.join("etc/new"), "new\n").unwrap();
    }
    let wh = std::fs::symlink_metadata(fx.diff(&child).join("etc/motd")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "the deletion is a 0/0 whiteout"
    );
    fx.drv.commit(&child).unwrap();
    assert_eq!(
        fx.drv.diff_source(&child, &parents).unwrap(),
        DiffSource::OverlayUpper {
            upper: fx.diff(&child),
            lower: vec![fx.diff(&base)]
        }
    );

    let chain = [child.clone(), base.clone()];
    let view = id("view");
    let mounts = fx.drv.view(&view, &chain).unwrap();
    assert!(
        matches!(&mounts[..], [Mount::Overlay { upper: None, .. }]),
        "{mounts:?}"
    );
    assert_eq!(fx.drv.mounts(&view, &chain, false).unwrap(), mounts);
    {
        let m = Mounted::new(&mounts, fx.scratch.join("view"), api);
        assert_eq!(
            std::fs::read_to_string(m.0.join("etc/new")).unwrap(),
            "new\n"
        );
        assert_eq!(
            std::fs::read_to_string(m.0.join("etc/keep")).unwrap(),
            "k\n"
        );
        assert!(!m.0.join("etc/motd").exists());
        let e = std::fs::write(m.0.join("etc/x"), "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(Errno::ROFS.raw_os_error()));
    }
    let single = id("single");
    let mounts = fx.drv.view(&single, &parents).unwrap();
    assert_eq!(
        mounts,
        vec![Mount::Bind {
            source: fx.diff(&base),
            read_only: true
        }]
    );

    for l in [&view, &single, &child] {
        fx.drv.remove(l).unwrap();
        fx.drv.remove(l).unwrap(); // idempotent
    }
    assert_eq!(
        fx.drv.usage(&child).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(fx.names("layers"), vec!["base"]);
    assert_eq!(fx.names("l"), vec![short], "the child's link went with it");
    assert!(fx.names("tmp").is_empty());
}

/// A base root is 0755 0:0; root attributes set on a layer, directly or
/// through a container's mount, are inherited by descendants.
#[test]
fn root_attributes_inherited() {
    let fx = fx();
    let base = id("base");
    fx.drv.prepare(&base, &[], &PrepareOpts::default()).unwrap();
    let root = fx.drv.apply_target(&base, &[]).unwrap().root;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::os::unix::fs::chown(&root, Some(1), Some(2)).unwrap();
    fx.drv.commit(&base).unwrap();
    let child = fx.committed("child", std::slice::from_ref(&base), &[]);
    let chain = [child, base];
    let grandchild = id("grandchild");
    let mounts = fx
        .drv
        .prepare(&grandchild, &chain, &PrepareOpts::default())
        .unwrap();
    assert_eq!(mode_owner(&fx.diff(&grandchild)), (0o711, 1, 2));
    {
        let m = Mounted::new(&mounts, fx.scratch.join("gc"), MountApi::New);
        assert_eq!(mode_owner(&m.0), (0o711, 1, 2));
        // `chmod /` inside the container.
        std::fs::set_permissions(&m.0, std::fs::Permissions::from_mode(0o750)).unwrap();
    }
    fx.drv.commit(&grandchild).unwrap();
    let next = id("next");
    fx.drv
        .prepare(
            &next,
            &[grandchild, chain[0].clone(), chain[1].clone()],
            &PrepareOpts::default(),
        )
        .unwrap();
    assert_eq!(mode_owner(&fx.diff(&next)), (0o750, 1, 2));
}

/// Cleanup removes dead layers with their links, dead staging trees,
/// interrupted removals and dangling links; it keeps live layers and a live
/// layer still being staged (whose link dangles until the rename).
#[test]
fn cleanup_removes_orphans_keeps_live() {
    let fx = fx();
    let base = fx.committed("base", &[], &[("etc/motd", "hi\n")]);
    let base_link = fx.names("l");
    let orphan = fx.committed(
        "orphan",
        std::slice::from_ref(&base),
        &[("big", &"x".repeat(8192))],
    );
    std::fs::create_dir_all(fx.state.join("tmp/new-half/diff")).unwrap();
    std::fs::write(fx.state.join("tmp/new-half/link"), "half00").unwrap();
    std::os::unix::fs::symlink("../layers/half/diff", fx.state.join("l/half00")).unwrap();
    std::fs::create_dir_all(fx.state.join("tmp/rm-gone/diff")).unwrap();
    std::os::unix::fs::symlink("../layers/gone2/diff", fx.state.join("l/gone22")).unwrap();
    std::fs::create_dir_all(fx.state.join("tmp/new-staged/diff")).unwrap();
    std::os::unix::fs::symlink("../layers/staged/diff", fx.state.join("l/stag00")).unwrap();

    let live = |l: &LayerId| *l == base || l.as_str() == "staged";
    let freed = fx.drv.cleanup(&live).unwrap();
    assert!(freed.bytes >= 8192 && freed.inodes >= 5, "{freed:?}");
    assert_eq!(fx.names("layers"), vec!["base"]);
    assert_eq!(fx.names("tmp"), vec!["new-staged"]);
    let mut links = base_link.clone();
    links.push("stag00".into());
    links.sort();
    assert_eq!(fx.names("l"), links);
    assert_eq!(
        fx.drv.usage(&orphan).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(fx.diff(&base).join("etc/motd").exists());
}

/// Refused or failed prepares leave nothing: no layer, staging or link.
#[test]
fn failed_prepare_leaves_nothing() {
    let fx = fx();
    let e = fx
        .drv
        .prepare(
            &id("q"),
            &[],
            &PrepareOpts {
                size_limit: Some(1 << 20),
            },
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    let e = fx
        .drv
        .prepare(&id("o"), &[id("gone")], &PrepareOpts::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let deep: Vec<LayerId> = (0..=MAX_OVERLAY_DEPTH)
        .map(|i| id(&format!("p{i}")))
        .collect();
    for e in [
        fx.drv
            .prepare(&id("deep"), &deep, &PrepareOpts::default())
            .map(drop)
            .unwrap_err(),
        fx.drv.view(&id("deep"), &deep).map(drop).unwrap_err(),
        fx.drv
            .mounts(&id("deep"), &deep, true)
            .map(drop)
            .unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::Limit, "{e}");
        assert!(e.to_string().contains("500"), "{e}");
    }
    assert!(
        fx.names("layers").is_empty() && fx.names("tmp").is_empty() && fx.names("l").is_empty()
    );
    let base = fx.committed("base", &[], &[("f", "1")]);
    let e = fx
        .drv
        .prepare(&base, &[], &PrepareOpts::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    assert_eq!(fx.names("l").len(), 1, "the refused prepare's link is gone");
    assert!(fx.diff(&base).join("f").exists());
}

/// A chain of 500 committed layers mounts as one writable overlay and as a
/// view through both APIs, the bottom layer's file visible; a 501st parent
/// is refused as a limit.
#[test]
fn five_hundred_layer_chain() {
    let fx = fx();
    let mut chain: Vec<LayerId> = Vec::new(); // nearest first
    for i in 0..MAX_OVERLAY_DEPTH {
        let l = fx.committed(
            &format!("l{i}"),
            &chain,
            &[(&format!("f{i}"), &format!("layer {i}\n"))],
        );
        chain.insert(0, l);
    }
    for api in [MountApi::New, MountApi::Legacy] {
        let top = id(&format!("top{}", api == MountApi::New));
        let mounts = fx
            .drv
            .prepare(&top, &chain, &PrepareOpts::default())
            .unwrap();
        let m = Mounted::new(&mounts, fx.scratch.join("top"), api);
        assert_eq!(
            std::fs::read_to_string(m.0.join("f0")).unwrap(),
            "layer 0\n"
        );
        assert_eq!(
            std::fs::read_to_string(m.0.join("f499")).unwrap(),
            "layer 499\n"
        );
        assert_eq!(std::fs::read_dir(&m.0).unwrap().count(), MAX_OVERLAY_DEPTH);
    }
    let view = fx.drv.view(&id("v"), &chain).unwrap();
    let m = Mounted::new(&view, fx.scratch.join("view"), MountApi::New);
    assert_eq!(
        std::fs::read_to_string(m.0.join("f0")).unwrap(),
        "layer 0\n"
    );
    let committed = fx.committed("l500", &chain, &[]);
    chain.insert(0, committed);
    let e = fx
        .drv
        .prepare(&id("toodeep"), &chain, &PrepareOpts::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Limit);
}

/// overlay2 says yes to fast diff only, with reasons for the rest.
#[test]
fn capabilities_are_honest() {
    let caps = fx().drv.capabilities();
    assert_eq!(caps.fast_diff, Support::Yes);
    for s in [caps.quota, caps.dedup] {
        assert!(matches!(&s, Support::No(why) if why.len() > 20), "{s:?}");
    }
}

/// probe: usable on a local filesystem, not when the state directory is on
/// overlayfs (as inside a container), with the reason.
#[test]
fn probe_refuses_overlay_state_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let env = |p: PathBuf| HostEnv { state_dir: p };
    assert_eq!(
        probe::probe(&env(tmp.path().join("not/yet/overlay2"))),
        drivers_api::Availability::Usable
    );
    for d in ["a", "b", "u", "w"] {
        std::fs::create_dir(tmp.path().join(d)).unwrap();
    }
    let m = Mount::Overlay {
        lower: vec![tmp.path().join("a"), tmp.path().join("b")],
        upper: Some(OverlayUpper {
            upper: tmp.path().join("u"),
            work: tmp.path().join("w"),
        }),
        options: format_options(),
    };
    let merged = Mounted::new(&[m], tmp.path().join("merged"), MountApi::New);
    match probe::probe(&env(merged.0.join("var/lib/overlay2"))) {
        drivers_api::Availability::Unusable { reason, hint } => {
            assert!(
                reason.contains("overlayfs") && reason.contains("merged"),
                "{reason}"
            );
            assert!(hint.is_some());
        }
        other => panic!("{other:?}"),
    }
}
