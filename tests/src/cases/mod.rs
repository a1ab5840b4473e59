//! Every case of `shared/spec/conformance.md`, registered in [`CASES`].
//!
//! A case is a plain function of a [`Fixture`] whose doc comment states the
//! property it checks. Names are `<origin>::<Name>`, with containerd's and
//! graphtest's own names kept, so `cargo test -- containerd::` picks a suite.

use crate::Fixture;

mod chain;
mod containerd;
mod crash;
mod cstorage;
mod fixtures;
mod graphtest;
mod hostile;
mod store;
mod subvol;
mod types;

/// One case.
#[derive(Clone, Copy)]
pub struct Case {
    /// `<origin>::<Name>`; the trial is `<backend>::<origin>::<Name>`.
    pub name: &'static str,
    /// The check.
    pub run: fn(&Fixture) -> anyhow::Result<()>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

macro_rules! case {
    ($name:literal, $f:path) => {
        Case {
            name: $name,
            run: $f,
        }
    };
}

/// The suite.
pub static CASES: &[Case] = &[
    // containerd core/snapshots/testsuite (conformance.md 2.1), all 21.
    case!("containerd::Basic", containerd::basic),
    case!("containerd::StatActive", containerd::stat_active),
    case!("containerd::StatComitted", containerd::stat_committed),
    case!("containerd::TransitivityTest", containerd::transitivity),
    case!(
        "containerd::PreareViewFailingtest",
        containerd::prepare_view_failing
    ),
    case!("containerd::Update", containerd::update),
    case!("containerd::Remove", containerd::remove),
    case!("containerd::Walk", containerd::walk),
    case!("containerd::LayerFileupdate", containerd::layer_file_update),
    case!(
        "containerd::RemoveDirectoryInLowerLayer",
        containerd::remove_directory_in_lower_layer
    ),
    case!("containerd::Chown", containerd::chown),
    case!(
        "containerd::DirectoryPermissionOnCommit",
        containerd::directory_permission_on_commit
    ),
    case!(
        "containerd::RemoveIntermediateSnapshot",
        containerd::remove_intermediate_snapshot
    ),
    case!(
        "containerd::DeletedFilesInChildSnapshot",
        containerd::deleted_files_in_child_snapshot
    ),
    case!(
        "containerd::MoveFileFromLowerLayer",
        containerd::move_file_from_lower_layer
    ),
    case!("containerd::ViewReadonly", containerd::view_readonly),
    case!("containerd::StatInWalk", containerd::stat_in_walk),
    case!("containerd::CloseTwice", containerd::close_twice),
    case!("containerd::RootPermission", containerd::root_permission),
    case!("containerd::Rename", containerd::rename),
    case!("containerd::128LayersMount", containerd::layers_128_mount),
    // The metastore's error classes (conformance.md 2.1, last list).
    case!("store::ErrorClasses", store::error_classes),
    // Every file type and attribute through mount, commit and view.
    case!("extra::AllFileTypes", types::all_file_types),
    // moby daemon/graphdriver/graphtest (2.2).
    case!("graphtest::CreateEmpty", graphtest::create_empty),
    case!("graphtest::CreateBase", graphtest::create_base),
    case!("graphtest::CreateSnap", graphtest::create_snap),
    case!("graphtest::DeepLayerRead128", graphtest::deep_layer_read),
    case!("graphtest::DiffApply10Files", graphtest::diff_apply),
    case!("graphtest::Changes", graphtest::changes),
    case!("graphtest::SetQuota", graphtest::set_quota),
    // moby btrfs/btrfs_test.go, on every backend (see subvol.rs).
    case!("graphtest::BtrfsSubvolDelete", subvol::subvol_delete),
    case!(
        "graphtest::XattrUnsupportedByBackingFS",
        graphtest::xattr_unsupported_by_backing_fs
    ),
    // containers/storage drivers/graphtest extras (2.3).
    case!(
        "cstorage::CreateSnapInheritsRootMode",
        cstorage::create_snap_root_mode
    ),
    case!(
        "cstorage::CreateFromTemplate",
        cstorage::create_from_template
    ),
    case!("cstorage::Echo", cstorage::echo),
    case!("cstorage::ListLayers", cstorage::list_layers),
    // Images made by real tools (tests/fixtures).
    case!("fixture::oci-tricky", fixtures::oci_tricky),
    case!("fixture::oci-umoci-insert", fixtures::oci_umoci_insert),
    // Deep chains and the depth limit.
    case!("chain::DeepChain", chain::deep_chain),
    // Hostile layer tars through store.apply_layer.
    case!("hostile::DotDotPath", hostile::dotdot_path),
    case!("hostile::AbsolutePath", hostile::absolute_path),
    case!("hostile::SymlinkThenWrite", hostile::symlink_then_write),
    case!(
        "hostile::RelativeSymlinkThenWrite",
        hostile::relative_symlink_then_write
    ),
    case!(
        "hostile::LowerSymlinkThenWrite",
        hostile::lower_symlink_then_write
    ),
    case!("hostile::HardlinkOutside", hostile::hardlink_outside),
    case!("hostile::AbsoluteHardlink", hostile::absolute_hardlink),
    case!("hostile::WhiteoutDotDot", hostile::whiteout_dotdot),
    case!("hostile::BareWhiteout", hostile::bare_whiteout),
    case!(
        "hostile::WhiteoutThroughDotDot",
        hostile::whiteout_through_dotdot
    ),
    case!(
        "hostile::DeviceThroughDotDot",
        hostile::device_through_dotdot
    ),
    case!("hostile::SizeBeyondData", hostile::size_beyond_data),
    case!("hostile::TruncatedGzip", hostile::truncated_gzip),
    case!("hostile::DigestMismatch", hostile::digest_mismatch),
    case!("hostile::DiffIdMismatch", hostile::diff_id_mismatch),
    // Interrupted operations.
    case!("crash::ReaderFailsHalfWay", crash::reader_fails_half_way),
    case!(
        "crash::FailedOperationUndone",
        crash::failed_operation_undone
    ),
    case!("crash::ApplyKilledHalfWay", crash::apply_killed_half_way),
    case!(
        "crash::MountKilledBeforeRecorded",
        crash::mount_killed_before_recorded
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Trial names must be unique, or libtest-mimic filters become ambiguous.
    #[test]
    fn case_names_are_unique() {
        let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }
}
