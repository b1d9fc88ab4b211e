//! File writing that never leaves a half-written file behind.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over `path`,
/// so a reader (or a resumed run after a kill) sees either the old or the new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f = File::create(tmp)?;
        f.write_all(bytes)?;
        Ok(())
    })
}

/// Like [`write_atomic`], with `write` filling the temporary file at the given path.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = write(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))
        .and_then(|()| normal_permissions(&tmp))
        .and_then(|()| Ok(File::open(&tmp)?.sync_all()?));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    crash_point("atomic.written");
    fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))?;
    sync_dir(dir);
    Ok(())
}

/// Gives `path` the mode a plain `File::create` gets (0666 less the umask), whatever
/// created it: a writer that makes its file private (0600, as temporary-file helpers do)
/// would otherwise publish a model others on the machine cannot read.
fn normal_permissions(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = 0o666 & !umask();
        let current = fs::metadata(path)?.permissions().mode() & 0o777;
        if current != mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

/// The process's umask, from `/proc/self/status` (Linux 4.7+; reading it with
/// `umask(2)` would have to change it, racing other threads' file creation); 022 where
/// it cannot be read.
#[cfg(unix)]
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Makes renames in `dir` durable. Best effort: not every platform can fsync a folder.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// `PATH.SUFFIX` beside `path` (`best` → `best.tmp`).
fn sibling(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    name.into()
}

/// Publishes the folder `dir`, filled by `fill` (which writes the files into the folder
/// it is given), by renaming a complete folder into place: it is assembled in `DIR.tmp`;
/// then an existing `DIR` becomes `DIR.old`, `DIR.tmp` becomes `DIR` and `DIR.old` is
/// removed. A crash at any point leaves the previous `DIR` intact or the new one in
/// place, and [`repair_published`] finishes what was begun.
pub fn publish_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let (tmp, old) = (sibling(dir, "tmp"), sibling(dir, "old"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    fill(&tmp)?;
    sync_dir(&tmp);
    crash_point("publish.filled");
    if dir.exists() {
        if old.exists() {
            fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
        }
        fs::rename(dir, &old)
            .with_context(|| format!("cannot rename {} to {}", dir.display(), old.display()))?;
        crash_point("publish.moved_old");
    }
    fs::rename(&tmp, dir)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent);
    }
    crash_point("publish.renamed");
    if old.exists() {
        fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
    }
    Ok(())
}

/// Finishes or undoes a [`publish_dir`] of `dir` that a crash interrupted. `DIR.old`
/// exists only once `DIR.tmp` was complete, so then `DIR.tmp` goes into place; a lone
/// `DIR.tmp` is put in place when `DIR` is missing and `complete` says it was filled
/// (a first publication), and removed otherwise.
pub fn repair_published(dir: &Path, complete: impl Fn(&Path) -> bool) -> Result<()> {
    let (tmp, old) = (sibling(dir, "tmp"), sibling(dir, "old"));
    let rename = |from: &Path| {
        fs::rename(from, dir)
            .with_context(|| format!("cannot rename {} to {}", from.display(), dir.display()))
    };
    if old.exists() && !dir.exists() {
        if tmp.exists() {
            rename(&tmp)?;
        } else {
            rename(&old)?;
        }
    }
    if tmp.exists() && !dir.exists() && complete(&tmp) {
        rename(&tmp)?;
    }
    for leftover in [tmp, old] {
        if leftover.exists() {
            fs::remove_dir_all(&leftover)
                .with_context(|| format!("cannot remove {}", leftover.display()))?;
        }
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent);
    }
    Ok(())
}

/// Lowercase hex of a digest: the form file fingerprints (sha256) are written in.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A test hook for crash-consistency tests: with `RNMT_ABORT_AT=NAME:N` in the
/// environment, the process kills itself with SIGKILL (no unwinding, no clean-up, as a
/// power cut or the OOM killer would) the Nth time it reaches the point `NAME`; with
/// `RNMT_STALL_AT=NAME:N` it stops there for good instead (a hung process, for the
/// tests of timeouts). Without the variables this is two loads of a cached `None`.
pub fn crash_point(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static AT: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static STALL: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    static STALL_HITS: AtomicU64 = AtomicU64::new(0);
    fn spec(var: &str) -> Option<(String, u64)> {
        let spec = std::env::var(var).ok()?;
        let (point, n) = spec.rsplit_once(':')?;
        Some((point.to_string(), n.parse().ok()?))
    }
    if let Some((point, n)) = STALL.get_or_init(|| spec("RNMT_STALL_AT")) {
        if point == name && STALL_HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            loop {
                std::thread::park();
            }
        }
    }
    let at = AT.get_or_init(|| spec("RNMT_ABORT_AT"));
    if let Some((point, n)) = at {
        if point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}
