//! Where a SQLite registry may live: SQLite's locks and its write-ahead log's shared memory are
//! not safe on a network filesystem (NFS, SMB/CIFS, Lustre, GPFS, CephFS, 9p, FUSE mounts such
//! as sshfs), so a registry there is refused before anything is opened, with an error that says
//! to use a PostgreSQL registry. `BEATLAB_SQLITE_NETWORK_FS=allow` overrides the refusal.

use std::path::Path;

use super::{RegistryError, Result};

/// The variable that lets a SQLite registry live on a network filesystem anyway.
pub const OVERRIDE_VAR: &str = "BEATLAB_SQLITE_NETWORK_FS";

/// Network (or user-space) filesystems by their `statfs` magic number (linux/magic.h and the
/// filesystems' own headers).
const NETWORK_FILESYSTEMS: &[(i64, &str)] = &[
    (0x6969, "NFS"),
    (0x517B, "SMB"),
    (0xFF53_4D42, "CIFS"),
    (0xFE53_4D42, "SMB2"),
    (0x6573_5546, "FUSE"),
    (0x0102_1997, "9p"),
    (0x0BD0_0BD0, "Lustre"),
    (0x4750_4653, "GPFS"),
    (0x00C3_6400, "CephFS"),
    (0x5346_414F, "AFS"),
    (0x6B41_4653, "kAFS"),
    (0x7375_7245, "Coda"),
    (0x0116_1970, "GFS2"),
    (0x564C, "NCP"),
    (0x013A_0F8C, "BeeGFS"),
];

/// The network filesystem a `statfs` magic number names, if it is one.
pub fn network_filesystem(magic: i64) -> Option<&'static str> {
    NETWORK_FILESYSTEMS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| *name)
}

/// Refuses a registry file whose folder (the nearest existing one) is on a network filesystem.
pub fn refuse_network_filesystem(path: &Path) -> Result<()> {
    if std::env::var(OVERRIDE_VAR).is_ok_and(|v| v == "allow") {
        return Ok(());
    }
    let mut folder = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    while !folder.exists() {
        match folder.parent() {
            Some(p) if !p.as_os_str().is_empty() => folder = p,
            _ => return Ok(()),
        }
    }
    let Some(magic) = statfs_magic(folder) else {
        return Ok(());
    };
    match network_filesystem(magic) {
        Some(filesystem) => Err(RegistryError::NetworkFilesystem {
            path: path.to_path_buf(),
            filesystem,
        }),
        None => Ok(()),
    }
}

/// The filesystem type (`f_type`) of the filesystem holding `folder`.
fn statfs_magic(folder: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(folder.as_os_str().as_bytes()).ok()?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `buf` has room for one statfs record.
    let rc = unsafe { libc::statfs(c.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statfs returned 0, so it filled `buf`.
    let st = unsafe { buf.assume_init() };
    // f_type's type differs between targets (i64, u32, i32); CIFS's magic has its top bit set.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64 & 0xFFFF_FFFF;
    Some(magic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_filesystems_are_known_by_their_magic_numbers() {
        assert_eq!(network_filesystem(0x6969), Some("NFS"));
        assert_eq!(network_filesystem(0xFF53_4D42), Some("CIFS"));
        assert_eq!(network_filesystem(0x6573_5546), Some("FUSE"));
        // ext4, XFS, btrfs, tmpfs, overlayfs: local.
        for local in [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994, 0x794C_7630] {
            assert_eq!(network_filesystem(local), None, "{local:#x}");
        }
    }

    #[test]
    fn a_local_folder_is_accepted_and_its_magic_is_read() {
        let dir = tempfile::tempdir().unwrap();
        assert!(statfs_magic(dir.path()).is_some());
        refuse_network_filesystem(&dir.path().join("new/reg.db")).unwrap();
    }
}
