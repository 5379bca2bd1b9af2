//! The store directory's files as root writes them where others may look: the
//! directory 0700 and files 0600 whatever the umask, and never through a symbolic
//! link (a link planted in place of a file would make root overwrite, or SQLite
//! convert, the file it points at).

use std::{
    fs::{self, DirBuilder, OpenOptions, Permissions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

/// Creates `dir` (and its parents) 0700 when missing; an existing directory keeps
/// its mode (the administrator's choice).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    // The umask may have taken bits the mode asked for, never added any; 0700 again
    // in case the directory was made with another mode meanwhile.
    fs::set_permissions(dir, Permissions::from_mode(0o700))
}

/// An error if `path` is a symbolic link (a missing path is fine).
pub fn refuse_symlink(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a symbolic link: lb does not write through links in its store (remove it)",
                path.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// Opens `path` for writing, 0600, never following a symbolic link.
fn open_private(path: &Path, truncate: bool, create_new: bool) -> io::Result<fs::File> {
    let file = OpenOptions::new()
        .write(true)
        .create(!create_new)
        .create_new(create_new)
        .truncate(truncate)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refuse_symlink(path).err().unwrap_or(e),
            _ => e,
        })?;
    file.set_permissions(Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Writes `data` to `path` whole (0600, no link followed).
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    open_private(path, true, false)?.write_all(data)
}

/// Writes `data` to `path` so that a reader never sees half of it: a fresh 0600
/// file beside it, renamed over it (a rename replaces a link, never follows it).
pub fn replace_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    open_private(&tmp, false, true)?.write_all(data)?;
    fs::rename(tmp, path)
}

/// Creates `path` empty and 0600 if it does not exist (a database file SQLite then
/// opens, whose log files take its mode); refuses a link in its place.
pub fn create_private(path: &Path) -> io::Result<()> {
    refuse_symlink(path)?;
    match open_private(path, false, true) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => r.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn files_are_private_whatever_the_umask_and_links_are_refused() {
        let d = Dir(std::env::temp_dir().join(format!("lb-files-{}", std::process::id())));
        let _ = fs::remove_dir_all(&d.0);
        // SAFETY: umask has no preconditions; this test's files only.
        let old = unsafe { libc::umask(0) };
        let dir = d.0.join("store");
        private_dir(&dir).unwrap();
        write_private(&dir.join("revision"), b"1\n").unwrap();
        replace_private(&dir.join("status.json"), b"{}").unwrap();
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("revision")), 0o600);
        assert_eq!(mode(&dir.join("status.json")), 0o600);
        // A link planted where a file goes: refused, its target untouched.
        let target = d.0.join("victim");
        fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("revision2")).unwrap();
        let err = write_private(&dir.join("revision2"), b"x").unwrap_err();
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        assert!(create_private(&dir.join("revision2")).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep");
    }
}
