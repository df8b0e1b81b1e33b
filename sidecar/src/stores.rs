//! The node's three stores, and the seal a clean stop leaves on them.
//!
//! | store | where | what |
//! |---|---|---|
//! | vault | `DATA/vault/` | sealed identity, its indexes, the outbox |
//! | ledger | `DATA/ledger/`, `DATA/ledger.wal` | the consortium's chain as this node holds it |
//! | governance | `DATA/consortium/raft/` | the Raft log and governance state, the join desk |
//!
//! **Why a seal.** sled checks what it reads back, but a log cut short reads to it as the torn
//! tail of a crash: it recovers what comes before and carries on, silently without the rest
//! (and may cut the file there). Bytes flipped in its log stop its recovery at that point the
//! same way. So a node that believed sled alone could start on a vault missing acknowledged
//! identity. At a clean stop (`fhirseal run` ending on SIGTERM or Ctrl-C, `fhirseal restore`,
//! an offline command that opened the stores) the process writes `DATA/stores.seal`, the size
//! and SHA-256 of every file of every store, once sled has let go of them; the next start
//! checks every file against it *before* sled opens anything, refuses to start on any
//! difference (naming the store, the file and what differs), and removes the seal only once the
//! stores match it. After a crash there is no seal: sled's own recovery stands, as it must
//! (a crash does leave a torn tail), and damage sled finds is still refused (see
//! [`fhirseal_storage::open`]).
//!
//! Hashing costs one read of the stores at each stop and start (about a second per 500 MB on
//! this project's 2-core machine).

use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One of the node's stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Vault,
    Ledger,
    Governance,
}

impl Store {
    /// Every store, in the order they are checked and copied.
    pub const ALL: [Store; 3] = [Store::Vault, Store::Ledger, Store::Governance];

    /// The store's name, as messages and backups call it.
    pub fn name(self) -> &'static str {
        match self {
            Store::Vault => "vault",
            Store::Ledger => "ledger",
            Store::Governance => "governance",
        }
    }

    /// The sled database's directory, relative to the data directory.
    pub fn relative_dir(self) -> &'static str {
        match self {
            Store::Vault => "vault",
            Store::Ledger => "ledger",
            Store::Governance => "consortium/raft",
        }
    }

    /// The sled database's directory.
    pub fn dir(self, data_dir: &Path) -> PathBuf {
        data_dir.join(self.relative_dir())
    }

    /// Files of the store beside its database, relative to the data directory.
    fn extra_files(self) -> &'static [&'static str] {
        match self {
            Store::Ledger => &["ledger.wal"],
            Store::Vault | Store::Governance => &[],
        }
    }
}

impl std::fmt::Display for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the stores cannot be trusted, sealed or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store is damaged: fhirseal does not start on it.
    #[error(
        "the {store} store ({path}) is damaged: {what}. fhirseal does not start on a damaged \
         store: `fhirseal check` shows what is wrong; bring the node back from a backup with \
         `fhirseal restore`"
    )]
    Damaged {
        store: Store,
        path: String,
        what: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the seal {path} is unreadable: {what}")]
    Seal { path: String, what: String },
}

impl StoreError {
    /// `store` found damaged when opened (sled's own finding).
    pub fn opened(
        store: Store,
        data_dir: &Path,
        error: &fhirseal_storage::open::OpenError,
    ) -> Self {
        StoreError::Damaged {
            store,
            path: store.dir(data_dir).display().to_string(),
            what: error.to_string(),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The seal's file in a data directory.
pub fn seal_path(data_dir: &Path) -> PathBuf {
    data_dir.join("stores.seal")
}

const SEAL_HEADER: &str = "fhirseal stores seal 1";

/// One file as the seal records it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SealedFile {
    store: Store,
    /// Relative to the data directory, `/`-separated.
    path: String,
    size: u64,
    sha256: String,
}

/// Every file of `store` (its database directory, walked, and its extra files), relative to
/// the data directory.
fn store_files(data_dir: &Path, store: Store) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let dir = store.dir(data_dir);
    if dir.is_dir() {
        walk(data_dir, &dir, &mut out)?;
    }
    for extra in store.extra_files() {
        if data_dir.join(extra).is_file() {
            out.push((*extra).to_owned());
        }
    }
    out.sort();
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(relative) = path.strip_prefix(root) {
            let parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(parts.join("/"));
        }
    }
    Ok(())
}

/// The size and SHA-256 of a file.
pub fn hash_file(path: &Path) -> Result<(u64, [u8; 32]), StoreError> {
    let mut file = fs::File::open(path).map_err(io(path))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hash.update(&buf[..n]);
    }
    Ok((size, hash.finalize().into()))
}

/// Writes the seal of the stores in `data_dir` as they are now. Call only once every handle on
/// them is closed (the process's runtime dropped): sled writes until then. sled's own threads
/// may still hold a database for a moment after the last handle goes (a `flush_async` that
/// has answered but not yet let go), so each store is first opened and closed here, once sled's
/// lock says nothing else in this process holds it: what is hashed is what sled left.
pub fn write_seal(data_dir: &Path) -> Result<(), StoreError> {
    for store in Store::ALL {
        released(data_dir, store)?;
    }
    let mut text = format!("{SEAL_HEADER}\n");
    for store in Store::ALL {
        for relative in store_files(data_dir, store)? {
            let (size, sha256) = hash_file(&data_dir.join(&relative))?;
            text.push_str(&format!(
                "{} {} {} {}\n",
                store.name(),
                size,
                fhirseal_storage::keys::hex(&sha256),
                relative
            ));
        }
    }
    let path = seal_path(data_dir);
    let temporary = data_dir.join("stores.seal.new");
    {
        let mut file = fs::File::create(&temporary).map_err(io(&temporary))?;
        file.write_all(text.as_bytes()).map_err(io(&temporary))?;
        file.sync_all().map_err(io(&temporary))?;
    }
    fs::rename(&temporary, &path).map_err(io(&path))?;
    fhirseal_storage::keys::sync_dir(data_dir).map_err(|e| StoreError::Io {
        path: data_dir.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(())
}

/// Waits until nothing holds `store`'s database (sled's lock), opening and closing it once.
fn released(data_dir: &Path, store: Store) -> Result<(), StoreError> {
    use fhirseal_storage::open::{open_db, OpenError};
    let dir = store.dir(data_dir);
    if !dir.is_dir() {
        return Ok(());
    }
    // A handle of this process goes within moments; one of another process (a node started
    // meanwhile on the same directory) does not, and then nothing is sealed.
    for _ in 0..200 {
        match open_db(&dir) {
            Ok(db) => {
                drop(db);
                return Ok(());
            }
            Err(OpenError::Locked { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(e) => return Err(StoreError::opened(store, data_dir, &e)),
        }
    }
    Err(StoreError::Seal {
        path: dir.display().to_string(),
        what: "the database is still held: not sealed".to_owned(),
    })
}

fn read_seal(data_dir: &Path) -> Result<Option<Vec<SealedFile>>, StoreError> {
    let path = seal_path(data_dir);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    let unreadable = |what: &str| StoreError::Seal {
        path: path.display().to_string(),
        what: what.to_owned(),
    };
    let mut lines = text.lines();
    if lines.next() != Some(SEAL_HEADER) {
        return Err(unreadable("it does not begin as a seal"));
    }
    let mut files = Vec::new();
    for line in lines {
        let mut parts = line.splitn(4, ' ');
        let (Some(store), Some(size), Some(sha256), Some(relative)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(unreadable("a line is not `store size sha256 path`"));
        };
        let store = Store::ALL
            .into_iter()
            .find(|s| s.name() == store)
            .ok_or_else(|| unreadable("a line names no store"))?;
        files.push(SealedFile {
            store,
            path: relative.to_owned(),
            size: size
                .parse()
                .map_err(|_| unreadable("a size is no number"))?,
            sha256: sha256.to_owned(),
        });
    }
    Ok(Some(files))
}

/// What differs between the stores and their seal: (store, what), one per file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealCheck {
    /// Whether a seal was there (no seal: the last stop was not clean, or there never was one).
    pub sealed: bool,
    pub differences: Vec<(Store, String)>,
}

impl SealCheck {
    /// The first difference of `store`, if any.
    pub fn of(&self, store: Store) -> Option<&str> {
        self.differences
            .iter()
            .find(|(s, _)| *s == store)
            .map(|(_, what)| what.as_str())
    }
}

/// Compares the stores in `data_dir` with their seal, changing nothing.
pub fn check_seal(data_dir: &Path) -> Result<SealCheck, StoreError> {
    let Some(sealed) = read_seal(data_dir)? else {
        return Ok(SealCheck::default());
    };
    let mut check = SealCheck {
        sealed: true,
        differences: Vec::new(),
    };
    for store in Store::ALL {
        let now = store_files(data_dir, store)?;
        let then: Vec<&SealedFile> = sealed.iter().filter(|f| f.store == store).collect();
        for file in &then {
            if !now.contains(&file.path) {
                check
                    .differences
                    .push((store, format!("{} is missing", file.path)));
                continue;
            }
            let (size, sha256) = hash_file(&data_dir.join(&file.path))?;
            let what = if size < file.size {
                format!(
                    "{} is {size} bytes, {} at the clean stop: it was cut short",
                    file.path, file.size
                )
            } else if size > file.size {
                format!(
                    "{} is {size} bytes, {} at the clean stop: something was written to it",
                    file.path, file.size
                )
            } else if fhirseal_storage::keys::hex(&sha256) != file.sha256 {
                format!(
                    "{}'s bytes differ from those fhirseal left at its clean stop",
                    file.path
                )
            } else {
                continue;
            };
            check.differences.push((store, what));
        }
        for path in now {
            if !then.iter().any(|f| f.path == path) {
                check
                    .differences
                    .push((store, format!("{path} was not there at the clean stop")));
            }
        }
    }
    Ok(check)
}

/// At a start: checks the stores against their seal and removes it once they match (from now
/// on sled changes them). A difference refuses the start, naming the store; the seal stays,
/// so that every later start refuses too until the store is restored. Returns whether there
/// was a seal (the last stop was clean).
pub fn take_seal(data_dir: &Path) -> Result<bool, StoreError> {
    let check = check_seal(data_dir)?;
    if let Some((store, what)) = check.differences.first() {
        return Err(StoreError::Damaged {
            store: *store,
            path: store.dir(data_dir).display().to_string(),
            what: what.clone(),
        });
    }
    if check.sealed {
        let path = seal_path(data_dir);
        fs::remove_file(&path).map_err(io(&path))?;
    }
    Ok(check.sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores(dir: &Path) {
        for store in Store::ALL {
            fs::create_dir_all(store.dir(dir)).unwrap();
            fs::write(store.dir(dir).join("db"), vec![7u8; 5000]).unwrap();
        }
        fs::write(dir.join("ledger.wal"), b"wal").unwrap();
    }

    #[test]
    fn a_clean_stop_seals_and_any_change_is_refused_naming_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        stores(dir);
        // No seal: nothing to compare (a first start, or after a crash).
        assert!(!take_seal(dir).unwrap());
        write_seal(dir).unwrap();
        assert!(take_seal(dir).unwrap());
        assert!(!seal_path(dir).exists());

        /// A file, its store, what is done to it, and what the refusal says.
        type Damage = (&'static str, Store, fn(&Path), &'static str);
        let damage: [Damage; 5] = [
            (
                "vault/db",
                Store::Vault,
                |p| {
                    let mut b = fs::read(p).unwrap();
                    b[100] ^= 1;
                    fs::write(p, b).unwrap();
                },
                "bytes differ",
            ),
            (
                "ledger/db",
                Store::Ledger,
                |p| {
                    fs::OpenOptions::new()
                        .write(true)
                        .open(p)
                        .unwrap()
                        .set_len(10)
                        .unwrap();
                },
                "cut short",
            ),
            (
                "ledger.wal",
                Store::Ledger,
                |p| fs::remove_file(p).unwrap(),
                "missing",
            ),
            (
                "consortium/raft/db",
                Store::Governance,
                |p| {
                    fs::write(p.with_file_name("snap.0001"), b"x").unwrap();
                },
                "was not there",
            ),
            (
                "consortium/raft/db",
                Store::Governance,
                |p| {
                    let mut b = fs::read(p).unwrap();
                    b.push(0);
                    fs::write(p, b).unwrap();
                },
                "written to",
            ),
        ];
        for (file, store, change, what) in damage {
            let dir = tempfile::tempdir().unwrap();
            let dir = dir.path();
            stores(dir);
            write_seal(dir).unwrap();
            change(&dir.join(file));
            let error = take_seal(dir).unwrap_err();
            let text = error.to_string();
            assert!(
                matches!(&error, StoreError::Damaged { store: s, .. } if *s == store),
                "{text}"
            );
            assert!(text.contains(&format!("the {store} store")), "{text}");
            assert!(text.contains(what), "{file}: {text}");
            // Refused again at the next start: the seal stays.
            assert!(take_seal(dir).is_err());
        }
    }
}
