# A FUSE filesystem for tests/registry_fuse.rs (a SQLite registry there is refused): bindfs
# mounts a scratch folder through /dev/fuse; fusermount3 unmounts it.
if ! command -v bindfs >/dev/null || ! command -v fusermount3 >/dev/null; then
    apt_install bindfs fuse3
fi
