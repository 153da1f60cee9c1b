//! Tests of the write helpers against real files, links, devices and FIFOs.

use super::*;

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn replaces_a_regular_file_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.txt");
    write_atomically(&path, b"one").unwrap();
    write_atomically(&path, b"two").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"two");
    assert_eq!(entries(dir.path()), ["a.txt"]);
}

#[test]
fn a_failed_write_removes_its_temp_file_and_keeps_the_old_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.txt");
    write_atomically(&path, b"old").unwrap();
    let err = write_atomically_with(&path, |w| {
        w.write_all(b"half")?;
        Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
    })
    .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    assert_eq!(fs::read(&path).unwrap(), b"old");
    assert_eq!(entries(dir.path()), ["a.txt"]);
}

#[test]
fn never_renames_over_a_symlink_a_folder_or_a_device() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.txt");
    fs::write(&target, b"keep").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let folder = dir.path().join("folder");
    fs::create_dir(&folder).unwrap();
    for (path, what) in [
        (link.as_path(), "a symlink"),
        (folder.as_path(), "a folder"),
        (Path::new("/dev/null"), "a character device"),
    ] {
        let err = write_atomically(path, b"new").unwrap_err();
        assert_eq!(not_regular(&err).map(|n| n.what), Some(what), "{err}");
        assert!(err.to_string().contains("refusing to replace"), "{err}");
    }
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read(&target).unwrap(), b"keep");
    assert!(
        fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert_eq!(entries(dir.path()), ["folder", "link", "target.txt"]);
}

#[test]
fn user_outputs_write_through_devices_and_links_as_a_shell_would() {
    let dir = tempfile::tempdir().unwrap();
    write_output(Path::new("/dev/null"), b"gone").unwrap();
    assert!(
        fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );

    let target = dir.path().join("real.png");
    fs::write(&target, b"old").unwrap();
    let link = dir.path().join("out.png");
    std::os::unix::fs::symlink("real.png", &link).unwrap();
    write_output(&link, b"new").unwrap();
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read(&target).unwrap(), b"new");

    // A dangling link creates the file it names, as `>` does.
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink("made.txt", &dangling).unwrap();
    write_output(&dangling, b"made").unwrap();
    assert_eq!(fs::read(dir.path().join("made.txt")).unwrap(), b"made");

    let err = write_output(dir.path(), b"x").unwrap_err();
    assert_eq!(not_regular(&err).map(|n| n.what), Some("a folder"));
    assert!(check_output(dir.path()).is_err());
    assert!(check_output(&dir.path().join("new.txt")).is_ok());
}

#[test]
fn user_outputs_write_through_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path and creates a FIFO; no memory is shared.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs::read(fifo).unwrap())
    };
    write_output(&fifo, b"through").unwrap();
    assert_eq!(reader.join().unwrap(), b"through");
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    // The atomic writer refuses it.
    assert!(not_regular(&write_atomically(&fifo, b"x").unwrap_err()).is_some());
}

#[test]
fn growing_files_refuse_links_and_devices() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.txt");
    open_append(&log).unwrap().write_all(b"a\n").unwrap();
    open_append(&log).unwrap().write_all(b"b\n").unwrap();
    assert_eq!(fs::read(&log).unwrap(), b"a\nb\n");

    let target = dir.path().join("elsewhere");
    fs::write(&target, b"keep").unwrap();
    let link = dir.path().join("link.txt");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = open_append(&link).unwrap_err();
    assert_eq!(not_regular(&err).map(|n| n.what), Some("a symlink"));
    let err = create_new(&link).unwrap_err();
    assert_eq!(not_regular(&err).map(|n| n.what), Some("a symlink"));
    let err = open_append(Path::new("/dev/null")).unwrap_err();
    assert_eq!(
        not_regular(&err).map(|n| n.what),
        Some("a character device")
    );
    assert_eq!(fs::read(&target).unwrap(), b"keep");

    let fresh = dir.path().join("events.1");
    create_new(&fresh).unwrap();
    assert_eq!(
        create_new(&fresh).unwrap_err().kind(),
        io::ErrorKind::AlreadyExists
    );
}

#[test]
fn bare_file_names_write_in_the_current_folder() {
    assert_eq!(parent_dir(Path::new("x.png")), Path::new("."));
    assert_eq!(parent_dir(Path::new("a/x.png")), Path::new("a"));
}

#[test]
fn stale_temp_files_of_dead_writers_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    // No process has a pid this large (the kernel's maximum is 2^22).
    let dead = dir.path().join(".a.safetensors.tmp-4294967-0");
    let live = dir
        .path()
        .join(format!(".b.safetensors.tmp-{}-7", std::process::id()));
    let other = dir.path().join("notes.tmp-1-2");
    for p in [&dead, &live, &other] {
        fs::write(p, b"x").unwrap();
    }
    assert_eq!(remove_stale_temps(dir.path()).unwrap(), 1);
    assert!(!dead.exists() && live.exists() && other.exists());
    assert_eq!(remove_stale_temps(&dir.path().join("absent")).unwrap(), 0);
    assert_eq!(temp_writer_pid(".x.tmp-12-3"), Some(12));
    assert_eq!(temp_writer_pid(".x.tmp-12"), None);
}
