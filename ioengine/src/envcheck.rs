//! Start-up checks: is io_uring allowed, is the locked-memory limit enough, does each data path
//! support O_DIRECT. Each finding says, in words an operator can act on, what to change.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// What the checks need to know.
#[derive(Debug, Clone)]
pub struct EnvRequirements {
    /// Locked memory the node will register: I/O memory per executor times executors.
    pub memlock_bytes_needed: u64,
    /// Directories that will be written with direct I/O.
    pub direct_io_paths: Vec<PathBuf>,
}

/// Runs every check.
#[must_use]
pub fn check_environment(req: &EnvRequirements) -> Vec<Finding> {
    let mut findings = vec![check_io_uring(), check_memlock(req.memlock_bytes_needed)];
    findings.extend(req.direct_io_paths.iter().map(|p| check_direct_io(p)));
    findings
}

/// io_uring may be disabled by sysctl (`kernel.io_uring_disabled`), seccomp or a container.
#[must_use]
pub fn check_io_uring() -> Finding {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok().map(|s| s.trim().to_string());
    match io_uring::IoUring::new(8) {
        Ok(_) => Finding { check: "io_uring", ok: true, detail: "io_uring_setup works".into() },
        Err(e) => {
            let mut detail = format!(
                "io_uring_setup failed: {e}. Strata needs io_uring with multishot accept and receive (Linux 6.0 or newer)."
            );
            if let Some(value) = sysctl.filter(|v| v != "0") {
                detail.push_str(&format!(
                    " kernel.io_uring_disabled is {value}: set it to 0 (`sysctl -w kernel.io_uring_disabled=0`)."
                ));
            } else {
                detail.push_str(" If running in a container, allow io_uring in its seccomp profile.");
            }
            Finding { check: "io_uring", ok: false, detail }
        }
    }
}

/// The soft RLIMIT_MEMLOCK in bytes (`u64::MAX` when unlimited).
#[must_use]
pub fn memlock_limit_bytes() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes into the struct we pass, which lives for the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut limit) };
    if rc != 0 {
        return 0;
    }
    if limit.rlim_cur == libc::RLIM_INFINITY { u64::MAX } else { limit.rlim_cur }
}

#[must_use]
pub fn check_memlock(needed: u64) -> Finding {
    let limit = memlock_limit_bytes();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    if limit >= needed {
        let shown = if limit == u64::MAX { "unlimited".to_string() } else { format!("{:.1} MiB", mib(limit)) };
        return Finding {
            check: "memlock",
            ok: true,
            detail: format!("locked-memory limit {shown}, {:.1} MiB needed", mib(needed)),
        };
    }
    Finding {
        check: "memlock",
        ok: false,
        detail: format!(
            "memlock limit is too low: {:.1} MiB, {:.1} MiB needed for registered I/O memory. Raise it with \
             `ulimit -l {}` (as root), `LimitMEMLOCK=` in the systemd unit, or `memlock` in \
             /etc/security/limits.conf.",
            mib(limit),
            mib(needed),
            needed.div_ceil(1024)
        ),
    }
}

/// Writes and reads one 4 KiB block with O_DIRECT in `dir` (some filesystems refuse it). The
/// directory must exist: a check changes nothing (created here, a missing mount point would
/// be checked on the filesystem underneath).
#[must_use]
pub fn check_direct_io(dir: &Path) -> Finding {
    let check = "direct I/O";
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Finding { check, ok: false, detail: format!("{} is not a directory", dir.display()) },
        Err(e) => return Finding { check, ok: false, detail: format!("cannot check {}: {e}", dir.display()) },
    }
    let probe = dir.join(format!(".strata-odirect-probe-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)?;
        let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("4 KiB aligned layout is valid");
        let buf = AlignedBlock::new(layout);
        file.write_all(buf.as_slice())?;
        file.sync_data()
    })();
    let _ = std::fs::remove_file(&probe);
    match result {
        Ok(()) => Finding { check, ok: true, detail: format!("{} supports O_DIRECT", dir.display()) },
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Finding {
            check,
            ok: false,
            detail: format!(
                "{} does not support O_DIRECT (EINVAL): put the data directory on a filesystem that does \
                 (ext4 or xfs on a block device)",
                dir.display()
            ),
        },
        Err(e) => Finding {
            check,
            ok: false,
            detail: format!("cannot write a direct-I/O probe file in {}: {e}", dir.display()),
        },
    }
}

/// A zeroed, 4 KiB-aligned heap block for the O_DIRECT probe.
struct AlignedBlock {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBlock {
    fn new(layout: std::alloc::Layout) -> Self {
        // SAFETY: the layout has a non-zero size; a null result is handled below.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Self { ptr, layout }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points to layout.size() initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBlock {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated with this layout and is freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_io_check_passes_on_a_real_filesystem() {
        let dir = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();
        let finding = check_direct_io(dir.path());
        assert!(finding.ok, "{}", finding.detail);
    }

    #[test]
    fn direct_io_check_creates_nothing_and_names_what_is_missing() {
        let dir = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();
        let missing = dir.path().join("not-mounted").join("data");
        let finding = check_direct_io(&missing);
        assert!(!finding.ok && finding.detail.contains("No such file"), "{}", finding.detail);
        assert!(!dir.path().join("not-mounted").exists(), "the check created nothing");
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let finding = check_direct_io(&file);
        assert!(!finding.ok && finding.detail.contains("is not a directory"), "{}", finding.detail);
    }

    #[test]
    fn memlock_check_says_what_to_raise() {
        let finding = check_memlock(u64::MAX - 1);
        if memlock_limit_bytes() != u64::MAX {
            assert!(!finding.ok);
            assert!(finding.detail.contains("ulimit -l"), "{}", finding.detail);
        }
    }
}
