//! Atomic file saves: write a temporary file beside the target, fsync it, rename it over the
//! target, fsync the folder. A crash at any point leaves either the old file or the new one,
//! never a torn mix; the temporary is removed on error. A target that is a symbolic link is
//! written through: the file it points to is replaced and the link stays a link.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The temporary path used while saving `path` (hidden, unique per process and call).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Atomically replace `path` with `bytes`. The parent folder must exist.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// The file a save of `path` replaces: `path` itself, or the file a symbolic link there
/// points to (followed to its end), so the link is kept.
fn save_target(path: &Path) -> PathBuf {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            fs::canonicalize(path).unwrap_or_else(|_| path.into())
        }
        _ => path.to_path_buf(),
    }
}

/// Atomically replace `path` with whatever `fill` writes into the temporary file.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let target = save_target(path);
    let path = target.as_path();
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_parent(path);
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Replace several files together, as far as a file system allows: every temporary is written
/// and synced before any rename, so a failure while writing (a full disk, a folder where a
/// file should be) changes none of them; then they are renamed in order, so only a crash
/// between two renames leaves the earlier files new and the later ones old.
pub fn write_atomic_group(files: &[(&Path, &[u8])]) -> io::Result<()> {
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let result = (|| {
        for (path, bytes) in files {
            let target = save_target(path);
            if target.is_dir() {
                return Err(io::Error::other(format!(
                    "{} is a folder",
                    target.display()
                )));
            }
            let tmp = temp_path(&target);
            staged.push((tmp.clone(), target));
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        for (tmp, target) in &staged {
            fs::rename(tmp, target)?;
            sync_parent(target);
        }
        Ok(())
    })();
    if result.is_err() {
        for (tmp, _) in &staged {
            let _ = fs::remove_file(tmp);
        }
    }
    result
}

/// Atomically copy `from` to `to` (same guarantees as `write_atomic`).
pub fn copy_atomic(from: &Path, to: &Path) -> io::Result<()> {
    let mut src = File::open(from)?;
    write_atomic_with(to, |f| io::copy(&mut src, f).map(|_| ()))
}

/// Make the rename durable by syncing the folder entry (best effort: not every platform or
/// file system allows opening a folder).
fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
}
