//! The write-ahead log on disk: one file (`data_dir/ledger.wal`) for the height the engine runs,
//! in the framing of [`fhirseal_consensus::ledger::wal`] (length-prefixed, checksummed records
//! after a header naming the height). Records are appended to a buffer and reach the file, with
//! `fdatasync`, at each flush point the driver names; a new height truncates the file. At start
//! the file is read back up to its first record that is not whole, and cut there.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use fhirseal_consensus::ledger::wal::{frame, header, parse, Log, LogRecord};

use crate::ledger::error::LedgerError;

/// The log file and what waits to be written to it.
#[derive(Debug)]
pub(crate) struct WalFile {
    path: PathBuf,
    file: Option<File>,
    /// Framed records not yet written.
    buffer: Vec<u8>,
    /// Whether anything was written since the last `fdatasync`.
    dirty: bool,
}

impl WalFile {
    /// Opens (or creates) the log at `path` and reads it back: its height and whole records,
    /// the file cut after the last of them.
    pub(crate) fn open(path: &Path) -> Result<(Self, Option<Log>), LedgerError> {
        let fail = |source| LedgerError::Wal {
            path: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(fail)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(fail)?;
        let parsed = parse(&bytes);
        if parsed.torn {
            tracing::warn!(
                path = %path.display(),
                kept = parsed.good_len,
                dropped = bytes.len() - parsed.good_len,
                "the write-ahead log ends in a record that was never made durable; cut there"
            );
            file.set_len(parsed.good_len as u64).map_err(fail)?;
            file.sync_data().map_err(fail)?;
        }
        file.seek(SeekFrom::End(0)).map_err(fail)?;
        let log = parsed.height.map(|h| (h, parsed.records));
        Ok((
            Self {
                path: path.to_owned(),
                file: Some(file),
                buffer: Vec::new(),
                dirty: false,
            },
            log,
        ))
    }

    fn fail(&self, source: std::io::Error) -> LedgerError {
        LedgerError::Wal {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Starts a log for `height`: the file holds its header alone, durably.
    pub(crate) async fn reset(&mut self, height: u64) -> Result<(), LedgerError> {
        self.buffer.clear();
        let header = header(height);
        self.with_file(move |file| {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&header)?;
            file.sync_data()
        })
        .await?;
        self.dirty = false;
        Ok(())
    }

    /// Appends a record (durable at the next [`WalFile::flush`]).
    pub(crate) fn append(&mut self, record: &LogRecord) {
        self.buffer.extend(frame(record));
    }

    /// Writes what waits and makes the file durable (`fdatasync`) before returning.
    pub(crate) async fn flush(&mut self) -> Result<(), LedgerError> {
        if self.buffer.is_empty() && !self.dirty {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.buffer);
        self.with_file(move |file| {
            file.write_all(&bytes)?;
            file.sync_data()
        })
        .await?;
        self.dirty = false;
        Ok(())
    }

    /// Runs `f` on the file off the async workers (a sync blocks for milliseconds).
    async fn with_file(
        &mut self,
        f: impl FnOnce(&mut File) -> std::io::Result<()> + Send + 'static,
    ) -> Result<(), LedgerError> {
        let Some(mut file) = self.file.take() else {
            return Err(self.fail(std::io::Error::other("the log file was lost by a failure")));
        };
        let (file, result) = tokio::task::spawn_blocking(move || {
            let result = f(&mut file);
            (file, result)
        })
        .await
        .map_err(|e| self.fail(std::io::Error::other(e.to_string())))?;
        self.file = Some(file);
        result.map_err(|e| self.fail(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirseal_consensus::bft::{Round, Timer, WalEntry};

    fn timeout(round: u32) -> LogRecord {
        LogRecord::Engine(WalEntry::Timeout(Timer::Propose(Round(round))))
    }

    #[tokio::test]
    async fn records_are_durable_at_a_flush_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.wal");
        let (mut wal, log) = WalFile::open(&path).unwrap();
        assert!(log.is_none());
        wal.reset(5).await.unwrap();
        wal.append(&timeout(0));
        wal.append(&timeout(1));
        wal.flush().await.unwrap();
        // Appended, never flushed: lost with the process.
        wal.append(&timeout(2));
        drop(wal);
        let (wal, log) = WalFile::open(&path).unwrap();
        assert_eq!(log, Some((5, vec![timeout(0), timeout(1)])));

        // A torn record at the end (a crash inside a write) is cut, and appending goes on.
        let len = std::fs::metadata(&path).unwrap().len();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[0, 0, 0, 40, 1, 2, 3]).unwrap();
        drop(file);
        drop(wal);
        let (mut wal, log) = WalFile::open(&path).unwrap();
        assert_eq!(log.unwrap().1.len(), 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        wal.append(&timeout(3));
        wal.flush().await.unwrap();
        let (mut wal, log) = WalFile::open(&path).unwrap();
        assert_eq!(log.unwrap().1, vec![timeout(0), timeout(1), timeout(3)]);

        // A new height starts an empty log.
        wal.reset(6).await.unwrap();
        let (_, log) = WalFile::open(&path).unwrap();
        assert_eq!(log, Some((6, vec![])));
    }
}
