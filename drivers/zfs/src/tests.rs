//! Unit tests of what needs no pool: names, properties, settings. The
//! backend on a real pool is covered by the conformance suite (tests/).

use super::*;

fn zfs() -> Zfs {
    Zfs {
        state_dir: "/var/lib/drivers/zfs".into(),
        config: Config {
            dataset: "tank/drivers".into(),
            pool_file: None,
            created: false,
            xattrs: XattrMode::Refuse,
        },
        ops: Box::new(ops::Cli),
    }
}

/// Datasets, snapshots and mountpoints are named from the layer id alone.
#[test]
fn layout_names() {
    let z = zfs();
    let id = LayerId::new("3f2a").unwrap();
    assert_eq!(z.dataset(id.as_str()), "tank/drivers/3f2a");
    assert_eq!(z.snapshot(&id), "tank/drivers/3f2a@committed");
    assert_eq!(
        z.mountpoint(id.as_str()),
        Path::new("/var/lib/drivers/zfs/datasets/3f2a")
    );
    assert_eq!(z.config.pool(), "tank");
}

/// A layer gets its mountpoint; a view is read-only; a size limit is the
/// dataset's refquota (its own data, not what it shares with the parent).
#[test]
fn dataset_properties() {
    let z = zfs();
    let id = LayerId::new("a1").unwrap();
    assert_eq!(
        z.props(&id, false, None),
        [("mountpoint", "/var/lib/drivers/zfs/datasets/a1".to_owned())]
    );
    let p = z.props(&id, true, Some(50 << 20));
    assert_eq!(p[1], ("readonly", "on".to_owned()));
    assert_eq!(p[2], ("refquota", "52428800".to_owned()));
}

/// The table select writes parses back; unknown keys and bad modes are
/// refused; xattrs default to being refused.
#[test]
fn config_table() {
    let t: toml::Table = toml::from_str(
        "dataset = \"drivers-1a2b\"\npool_file = \"/r/zfs/pool.img\"\ncreated = true\n",
    )
    .unwrap();
    let c: Config = drivers_api::parse_config("backends.zfs", &t).unwrap();
    assert_eq!(c.xattrs, XattrMode::Refuse);
    assert_eq!(c.pool(), "drivers-1a2b");
    assert_eq!(toml::Table::try_from(&c).unwrap(), {
        let mut t = t.clone();
        t.insert("xattrs".into(), "refuse".into());
        t
    });
    for bad in [
        "dataset = \"x\"\ncolour = 1\n",
        "dataset = \"x\"\nxattrs = \"keep\"\n",
        "created = true\n",
    ] {
        let t: toml::Table = toml::from_str(bad).unwrap();
        assert!(
            drivers_api::parse_config::<Config>("backends.zfs", &t).is_err(),
            "{bad}"
        );
    }
    let t: toml::Table = toml::from_str("dataset = \"x\"\nxattrs = \"drop\"\n").unwrap();
    let c: Config = drivers_api::parse_config("backends.zfs", &t).unwrap();
    assert_eq!(c.xattrs, XattrMode::Drop);
}

/// Dropping xattrs is only ever chosen by the user, and only where the
/// filesystem cannot store them.
#[test]
fn xattr_policy() {
    let mut z = zfs();
    assert_eq!(z.layer_xattrs(), LayerXattrs::Store);
    z.config.xattrs = XattrMode::Drop;
    let want = if stores_xattrs() {
        LayerXattrs::Store
    } else {
        LayerXattrs::Drop
    };
    assert_eq!(z.layer_xattrs(), want);
}

/// Select refuses what zfs cannot take before touching anything.
#[test]
fn select_refusals() {
    let env = HostEnv {
        state_dir: std::env::temp_dir().join("drivers-zfs-unit-never-created"),
    };
    let e = |a: drivers_api::SelectArgs| {
        setup::setup(&env, &a, &toml::Table::new())
            .unwrap_err()
            .to_string()
    };
    let none = e(drivers_api::SelectArgs::default());
    assert!(
        none.contains("--dataset POOL/NAME") && none.contains("--loopback SIZE"),
        "{none}"
    );
    let path = e(drivers_api::SelectArgs {
        path: Some("/x".into()),
        ..Default::default()
    });
    assert!(path.contains("does not take --path"), "{path}");
    let small = e(drivers_api::SelectArgs {
        loopback: Some(1 << 20),
        ..Default::default()
    });
    assert!(small.contains("64 MiB"), "{small}");
    let bad = e(drivers_api::SelectArgs {
        dataset: Some("9pool/x".into()),
        ..Default::default()
    });
    assert!(bad.contains("must start with a letter"), "{bad}");
    assert!(!env.state_dir.exists());
}
