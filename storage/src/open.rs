//! Opening a sled database, with what goes wrong said plainly.
//!
//! sled checks what it reads back (checksums of its configuration, snapshot and log) and
//! reports damage as `Corruption`, an unreadable configuration as `Unsupported`, and on some
//! damage it panics while recovering. All of these become [`OpenError::Damaged`]; another
//! process holding the database is [`OpenError::Locked`]. What sled does *not* find (a log cut
//! short reads as a crash's torn tail) is for the clean-stop seal of the sidecar to find.

use std::path::Path;

/// Why a sled database cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the database (sled locks it).
    #[error("{path} is locked: in use by a running fhirseal, or another process")]
    Locked { path: String },
    /// sled found the database damaged, or failed on it while recovering.
    #[error("{path} is damaged: {reason}")]
    Damaged { path: String, reason: String },
    /// The operating system refused (permissions, a full disk, …).
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl OpenError {
    /// Whether sled found the database damaged.
    pub fn is_damage(&self) -> bool {
        matches!(self, OpenError::Damaged { .. })
    }
}

/// sled's page cache per database. Its default (1 GiB) would let a node's three databases hold
/// up to 3 GiB; the operating system's page cache keeps what is read often anyway.
pub const CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Opens (or creates) the sled database in the directory `path`.
pub fn open_db(path: &Path) -> Result<sled::Db, OpenError> {
    let shown = path.display().to_string();
    let opened = std::panic::catch_unwind(|| {
        sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
    });
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(error)) => Err(classify(shown, error)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Err(OpenError::Damaged {
                path: shown,
                reason: format!("sled failed while recovering it ({what})"),
            })
        }
    }
}

/// Runs `open` on the database at `path`, which a test just dropped its last handle of, until
/// it is no longer refused as `locked`: sled's flusher thread lets go of the file lock a moment
/// after that. Waits up to 5 s.
#[cfg(test)]
pub(crate) fn once_unlocked<T, E: std::fmt::Display>(
    path: &Path,
    mut open: impl FnMut() -> Result<T, E>,
    locked: impl Fn(&E) -> bool,
) -> T {
    for _ in 0..50 {
        match open() {
            Ok(opened) => return opened,
            Err(e) if locked(&e) => std::thread::sleep(std::time::Duration::from_millis(100)),
            Err(e) => panic!("reopening {}: {e}", path.display()),
        }
    }
    panic!("{} stayed locked", path.display())
}

/// Opens the database at `path` again in a test that just dropped its last handle (see
/// [`once_unlocked`]).
#[cfg(test)]
pub(crate) fn reopen(path: &Path) -> sled::Db {
    once_unlocked(
        path,
        || open_db(path),
        |e| matches!(e, OpenError::Locked { .. }),
    )
}

fn classify(path: String, error: sled::Error) -> OpenError {
    match error {
        // sled reports the lock another process holds as an I/O error of its own wording,
        // whatever the kind of the underlying one.
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock") =>
        {
            OpenError::Locked { path }
        }
        sled::Error::Io(source) => OpenError::Io { path, source },
        sled::Error::Corruption { .. } => OpenError::Damaged {
            path,
            reason: "sled's checksums do not match what it reads".to_owned(),
        },
        sled::Error::Unsupported(what) => OpenError::Damaged {
            path,
            reason: format!("sled cannot read it: {what}"),
        },
        other => OpenError::Damaged {
            path,
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_configuration_is_damage_and_a_second_opener_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        db.insert(b"k", b"v").unwrap();
        db.flush().unwrap();
        // sled's lock is per process (fcntl): another process is what it refuses, which the
        // binary's tests cover; here the configuration file is damaged instead.
        drop(db);
        let conf = dir.path().join("conf");
        let mut bytes = std::fs::read(&conf).unwrap();
        bytes[10] ^= 0x5a;
        std::fs::write(&conf, bytes).unwrap();
        let error = open_db(dir.path()).unwrap_err();
        assert!(error.is_damage(), "{error}");
        assert!(error.to_string().contains("damaged"), "{error}");
    }
}
