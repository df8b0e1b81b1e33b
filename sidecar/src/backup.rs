//! `fhirseal backup` and `fhirseal restore`.
//!
//! **How a running node is copied.** sled holds an exclusive lock on each database and its
//! files change under any copy made from outside, so a backup of a running node goes through
//! the node: it listens on a Unix socket in its data directory (`DATA/control.sock`, mode 0600,
//! so that only who may read the data directory itself may ask), and on `backup 1` it holds
//! every store write ([`fhirseal_storage::pause`]) while it writes the vault, the chain and the
//! governance store as dumps ([`fhirseal_storage::dump`]) down the socket: one consistent cut
//! across the three, without stopping reads. Writes wait meanwhile (a copy streams at disk
//! speed; the socket has a write timeout, so a client that stops reading cannot hold them).
//! A socket rather than an HTTP route: no API key can reach it from the network, and what it
//! hands out (every sealed record, every block) is what the data directory's owner already has.
//! A stopped node's stores are dumped by the command itself (sled's lock says no node runs).
//!
//! **What a backup holds.** `DIR/vault.dump`, `DIR/ledger.dump`, `DIR/governance.dump`, the
//! consortium files (`membership.toml`, `trust.toml`, the genesis commands, a join request)
//! in `DIR/consortium/`, and `DIR/manifest.toml` (written last: a backup without it is
//! incomplete) with each dump's SHA-256 and the id of the RSA key the vault is sealed for. The
//! keystore is copied into `DIR/keys/` only with `--with-keys`: those keys decrypt the vault, so
//! a backup with them is as secret as the vault itself, and the command says so.
//!
//! **Restore** goes into a fresh data directory only: it checks every dump against the
//! manifest, requires keys whose RSA key is the one the vault was sealed for (from the backup,
//! or already in the configured keystore), loads the dumps into new databases, and seals them
//! ([`crate::stores`]). The restored node's first start catches its chain up from the other
//! members, as any node behind does; in a consortium of one the backup's chain is the chain.

use std::fs;
use std::io::{BufRead as _, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fhirseal_storage::dump::{self, DumpError, DumpSummary};
use fhirseal_storage::keys::hex;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::consortium::files::{Layout, Membership};
use crate::stores::{self, Store, StoreError};

/// The control socket's file in a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

const REQUEST: &str = "backup 1";
/// Frame kinds after the stores' (0, 1, 2 in [`Store::ALL`] order).
const FRAME_DONE: u8 = 0xFF;
const FRAME_FAILED: u8 = 0xFE;
const CHUNK: usize = 64 * 1024;
/// How long the node waits for a client to take what it writes.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a backup or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Dump { what: String, source: DumpError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the node answered: {0}")]
    Node(String),
    #[error("{0}")]
    Refused(String),
    #[error("keys: {0}")]
    Keys(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The running node's stores, as the control socket copies them.
#[derive(Debug, Clone)]
pub struct Control {
    pub vault: sled::Db,
    pub ledger: sled::Db,
    pub governance: sled::Db,
}

impl Control {
    fn db(&self, store: Store) -> &sled::Db {
        match store {
            Store::Vault => &self.vault,
            Store::Ledger => &self.ledger,
            Store::Governance => &self.governance,
        }
    }
}

/// The running node's control socket; removed when dropped.
#[derive(Debug)]
pub struct ControlListener {
    listener: Arc<tokio::net::UnixListener>,
    path: PathBuf,
    control: Arc<Control>,
}

impl ControlListener {
    /// Listens on `DATA/control.sock` (a socket a crashed node left is replaced).
    pub fn bind(data_dir: &Path, control: Control) -> Result<Self, BackupError> {
        let path = socket_path(data_dir);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        let listener = tokio::net::UnixListener::bind(&path).map_err(io(&path))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io(&path))?;
        }
        Ok(Self {
            listener: Arc::new(listener),
            path,
            control: Arc::new(control),
        })
    }

    /// Answers requests until the task is aborted.
    pub fn serve(&self) -> tokio::task::JoinHandle<()> {
        let listener = Arc::clone(&self.listener);
        let control = Arc::clone(&self.control);
        tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "control socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let control = Arc::clone(&control);
                tokio::task::spawn_blocking(move || {
                    let result = stream
                        .into_std()
                        .map_err(BackupError::from_socket)
                        .and_then(|s| answer(s, &control));
                    if let Err(error) = result {
                        tracing::warn!(%error, "control socket: backup not sent");
                    }
                });
            }
        })
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        let _gone = fs::remove_file(&self.path);
    }
}

impl BackupError {
    fn from_socket(source: std::io::Error) -> Self {
        BackupError::Io {
            path: "the control socket".to_owned(),
            source,
        }
    }
}

/// Writes frames of one kind: `kind ‖ u32 len ‖ bytes`; a frame of length 0 ends the kind.
struct Frames<'a> {
    out: &'a mut UnixStream,
    kind: u8,
    buffer: Vec<u8>,
}

impl Frames<'_> {
    fn emit(&mut self) -> std::io::Result<()> {
        let len = u32::try_from(self.buffer.len()).unwrap_or(u32::MAX);
        self.out.write_all(&[self.kind])?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(&self.buffer)?;
        self.buffer.clear();
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            self.emit()?;
        }
        self.emit()
    }
}

impl Write for Frames<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK {
            self.emit()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One request on the control socket, answered on a blocking thread.
fn answer(mut stream: UnixStream, control: &Control) -> Result<(), BackupError> {
    stream
        .set_nonblocking(false)
        .map_err(BackupError::from_socket)?;
    stream
        .set_write_timeout(Some(WRITE_TIMEOUT))
        .map_err(BackupError::from_socket)?;
    stream
        .set_read_timeout(Some(WRITE_TIMEOUT))
        .map_err(BackupError::from_socket)?;
    let mut line = String::new();
    BufReader::new((&mut stream).take(64))
        .read_line(&mut line)
        .map_err(BackupError::from_socket)?;
    if line.trim() != REQUEST {
        let mut frames = Frames {
            out: &mut stream,
            kind: FRAME_FAILED,
            buffer: b"unknown request".to_vec(),
        };
        return frames.emit().map_err(BackupError::from_socket);
    }
    tracing::info!("backup: copying the stores; store writes wait meanwhile");
    let copied = {
        let _paused = fhirseal_storage::pause::pause();
        let mut copied = Ok(());
        for (kind, store) in Store::ALL.into_iter().enumerate() {
            let mut frames = Frames {
                out: &mut stream,
                kind: kind as u8,
                buffer: Vec::with_capacity(CHUNK + 1024),
            };
            let dumped = dump::dump(control.db(store), store.name(), &mut frames)
                .map_err(|source| BackupError::Dump {
                    what: store.name().to_owned(),
                    source,
                })
                .and_then(|_| frames.finish().map_err(BackupError::from_socket));
            if dumped.is_err() {
                copied = dumped;
                break;
            }
        }
        copied
    };
    let (kind, text) = match &copied {
        Ok(()) => (FRAME_DONE, "ok".to_owned()),
        Err(e) => (FRAME_FAILED, e.to_string()),
    };
    let mut frames = Frames {
        out: &mut stream,
        kind,
        buffer: text.into_bytes(),
    };
    frames.emit().map_err(BackupError::from_socket)?;
    tracing::info!("backup: stores copied");
    copied
}

/// `DIR/manifest.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// When the copy was made, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Whether the node was running (copied through its control socket).
    pub online: bool,
    pub consortium: String,
    pub member: String,
    /// The id (hex) of the RSA key the vault is sealed for.
    pub rsa_key_id: String,
    /// Whether `DIR/keys/` holds the node's keystore.
    pub keys_included: bool,
    pub stores: Vec<ManifestStore>,
}

/// One dump of a backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestStore {
    pub name: String,
    pub file: String,
    pub trees: u64,
    pub entries: u64,
    pub sha256: String,
}

const MANIFEST: &str = "manifest.toml";
const MANIFEST_FORMAT: u32 = 1;

/// What `backup` made.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Where the keys it holds are (with `--with-keys`).
    pub keys: Option<PathBuf>,
    /// The keystore that was not copied (without `--with-keys`).
    pub keys_left: PathBuf,
}

/// A directory that does not exist, or is empty; made (0700) if needed.
fn fresh_dir(dir: &Path, what: &str) -> Result<(), BackupError> {
    if dir.exists() {
        let mut entries = fs::read_dir(dir).map_err(io(dir))?;
        if entries.next().is_some() {
            return Err(BackupError::Refused(format!(
                "{what} {} is not empty: give a new directory",
                dir.display()
            )));
        }
    }
    fs::create_dir_all(dir).map_err(io(dir))?;
    restrict(dir)
}

fn restrict(dir: &Path) -> Result<(), BackupError> {
    fhirseal_storage::keys::restrict_dir(dir).map_err(|e| BackupError::Io {
        path: dir.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Copies the files of `from` into `to` (made 0700), recursively; files 0600.
fn copy_tree(from: &Path, to: &Path) -> Result<(), BackupError> {
    fs::create_dir_all(to).map_err(io(to))?;
    restrict(to)?;
    for entry in fs::read_dir(from).map_err(io(from))? {
        let path = entry.map_err(io(from))?.path();
        let Some(name) = path.file_name() else {
            continue;
        };
        let target = to.join(name);
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else if path.is_file() {
            copy_file(&path, &target)?;
        }
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut source = fs::File::open(from).map_err(io(from))?;
    let mut target = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(io(to))?;
    std::io::copy(&mut source, &mut target).map_err(io(to))?;
    target.sync_all().map_err(io(to))
}

/// The consortium files a node needs beside its databases.
const CONSORTIUM_FILES: [&str; 4] = [
    "membership.toml",
    "trust.toml",
    "genesis",
    "join-request.cmd",
];

fn rsa_key_id(keys: &Path) -> Result<Option<String>, BackupError> {
    fhirseal_storage::keys::rsa_key_id_in(keys)
        .map(|id| id.map(|id| hex(&id)))
        .map_err(|e| BackupError::Keys(e.to_string()))
}

/// Copies the node of `config` into `dir` (see the module's documentation), calling
/// `progress` with the bytes written so far.
pub fn backup(
    config: &Config,
    dir: &Path,
    with_keys: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<BackupReport, BackupError> {
    let data_dir = &config.data_dir;
    let layout = Layout::of(config);
    let membership = Membership::load(&layout)
        .map_err(|e| BackupError::Refused(e.to_string()))?
        .ok_or_else(|| {
            BackupError::Refused(format!(
                "{} holds no node: has fhirseal run with this data directory?",
                data_dir.display()
            ))
        })?;
    let keys_dir = config.keys_dir();
    let rsa_key_id = rsa_key_id(&keys_dir)?.ok_or_else(|| {
        BackupError::Keys(format!(
            "{} holds no RSA key: the vault could not be read back from this backup",
            keys_dir.display()
        ))
    })?;
    fresh_dir(dir, "the backup directory")?;
    let (online, summaries) = match UnixStream::connect(socket_path(data_dir)) {
        Ok(stream) => (true, from_node(stream, dir, progress)?),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            (false, from_files(data_dir, dir, progress)?)
        }
        Err(e) => return Err(BackupError::from_socket(e)),
    };
    let consortium = dir.join("consortium");
    fs::create_dir_all(&consortium).map_err(io(&consortium))?;
    for name in CONSORTIUM_FILES {
        let from = layout.dir().join(name);
        if from.is_dir() {
            copy_tree(&from, &consortium.join(name))?;
        } else if from.is_file() {
            copy_file(&from, &consortium.join(name))?;
        }
    }
    let keys = if with_keys {
        let target = dir.join("keys");
        copy_tree(&keys_dir, &target)?;
        Some(target)
    } else {
        None
    };
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        created_ms: crate::clock::Clock::now_ms(&crate::clock::SystemClock),
        online,
        consortium: membership.consortium,
        member: membership.member,
        rsa_key_id,
        keys_included: with_keys,
        stores: Store::ALL
            .into_iter()
            .zip(summaries)
            .map(|(store, summary)| ManifestStore {
                name: store.name().to_owned(),
                file: dump_file(store),
                trees: summary.trees,
                entries: summary.entries,
                sha256: hex(&summary.sha256),
            })
            .collect(),
    };
    let text = toml::to_string(&manifest).map_err(|e| BackupError::Refused(e.to_string()))?;
    let path = dir.join(MANIFEST);
    let mut file = fs::File::create(&path).map_err(io(&path))?;
    file.write_all(text.as_bytes()).map_err(io(&path))?;
    file.sync_all().map_err(io(&path))?;
    Ok(BackupReport {
        dir: dir.to_owned(),
        manifest,
        keys,
        keys_left: keys_dir,
    })
}

fn dump_file(store: Store) -> String {
    format!("{}.dump", store.name())
}

/// Receives the dumps from the running node.
fn from_node(
    mut stream: UnixStream,
    dir: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<DumpSummary>, BackupError> {
    stream
        .write_all(format!("{REQUEST}\n").as_bytes())
        .map_err(BackupError::from_socket)?;
    let mut files: Vec<Option<fs::File>> = Vec::new();
    for store in Store::ALL {
        let path = dir.join(dump_file(store));
        files.push(Some(fs::File::create(&path).map_err(io(&path))?));
    }
    let mut written = 0u64;
    let mut buffer = Vec::new();
    loop {
        let mut head = [0u8; 5];
        stream
            .read_exact(&mut head)
            .map_err(BackupError::from_socket)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        buffer.resize(len, 0);
        stream
            .read_exact(&mut buffer)
            .map_err(BackupError::from_socket)?;
        match head[0] {
            FRAME_DONE => break,
            FRAME_FAILED => {
                return Err(BackupError::Node(
                    String::from_utf8_lossy(&buffer).into_owned(),
                ))
            }
            kind => {
                let slot = files
                    .get_mut(usize::from(kind))
                    .ok_or_else(|| BackupError::Node("a frame of no store".to_owned()))?;
                if len == 0 {
                    if let Some(file) = slot.take() {
                        file.sync_all().map_err(|e| io(dir)(e))?;
                    }
                } else {
                    let file = slot
                        .as_mut()
                        .ok_or_else(|| BackupError::Node("a store sent twice".to_owned()))?;
                    file.write_all(&buffer).map_err(|e| io(dir)(e))?;
                    written += len as u64;
                    progress(written);
                }
            }
        }
    }
    if files.iter().any(Option::is_some) {
        return Err(BackupError::Node("a store was not sent whole".to_owned()));
    }
    Store::ALL
        .into_iter()
        .map(|store| verify_dump(&dir.join(dump_file(store)), store))
        .collect()
}

/// Dumps a stopped node's stores itself.
fn from_files(
    data_dir: &Path,
    dir: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<DumpSummary>, BackupError> {
    // sled changes its files when it opens them: the seal of a clean stop is checked first
    // (a damaged store is not copied) and written again after.
    let sealed = stores::take_seal(data_dir)?;
    let mut summaries = Vec::new();
    let mut written = 0u64;
    for store in Store::ALL {
        let db_dir = store.dir(data_dir);
        if !db_dir.is_dir() {
            return Err(BackupError::Refused(format!(
                "there is no {store} store in {}",
                db_dir.display()
            )));
        }
        let db = fhirseal_storage::open::open_db(&db_dir).map_err(|e| match e {
            fhirseal_storage::open::OpenError::Locked { .. } => BackupError::Refused(format!(
                "{} is held by a running fhirseal whose control socket does not answer",
                db_dir.display()
            )),
            e => StoreError::opened(store, data_dir, &e).into(),
        })?;
        let path = dir.join(dump_file(store));
        let file = fs::File::create(&path).map_err(io(&path))?;
        let mut out = std::io::BufWriter::new(file);
        let summary =
            dump::dump(&db, store.name(), &mut out).map_err(|source| BackupError::Dump {
                what: store.name().to_owned(),
                source,
            })?;
        let file = out.into_inner().map_err(|e| io(&path)(e.into_error()))?;
        file.sync_all().map_err(io(&path))?;
        written += fs::metadata(&path).map_err(io(&path))?.len();
        progress(written);
        drop(db);
        summaries.push(summary);
    }
    if sealed {
        stores::write_seal(data_dir)?;
    }
    Ok(summaries)
}

fn verify_dump(path: &Path, store: Store) -> Result<DumpSummary, BackupError> {
    let file = fs::File::open(path).map_err(io(path))?;
    let (name, summary) =
        dump::verify(std::io::BufReader::new(file)).map_err(|source| BackupError::Dump {
            what: path.display().to_string(),
            source,
        })?;
    if name != store.name() {
        return Err(BackupError::Refused(format!(
            "{} holds the {name} store, not the {store}",
            path.display()
        )));
    }
    Ok(summary)
}

/// What `restore` did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub manifest: Manifest,
    /// Where the keys came from: the backup, or the keystore already in place.
    pub keys_from_backup: bool,
}

/// Brings the node of the backup in `from` back into `config`'s data directory, which must be
/// new (see the module's documentation). `progress` is told each store as it is loaded.
pub fn restore(
    config: &Config,
    from: &Path,
    progress: &mut dyn FnMut(Store),
) -> Result<RestoreReport, BackupError> {
    let path = from.join(MANIFEST);
    let text = fs::read_to_string(&path).map_err(|e| {
        BackupError::Refused(format!(
            "{} is not a whole backup ({}: {e})",
            from.display(),
            path.display()
        ))
    })?;
    let manifest: Manifest = toml::from_str(&text)
        .map_err(|e| BackupError::Refused(format!("{}: {e}", path.display())))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(BackupError::Refused(format!(
            "the backup is of format {}, this version reads {MANIFEST_FORMAT}",
            manifest.format
        )));
    }
    // Every dump whole and the one the manifest names, before anything is written.
    for store in Store::ALL {
        let entry = manifest
            .stores
            .iter()
            .find(|s| s.name == store.name())
            .ok_or_else(|| BackupError::Refused(format!("the backup has no {store} store")))?;
        let summary = verify_dump(&from.join(&entry.file), store)?;
        if hex(&summary.sha256) != entry.sha256 {
            return Err(BackupError::Refused(format!(
                "{} is not the dump the manifest names (its SHA-256 differs)",
                entry.file
            )));
        }
    }
    // Keys whose RSA key is the vault's.
    let keys_dir = config.keys_dir();
    let backup_keys = from.join("keys");
    let keys_from_backup = match rsa_key_id(&keys_dir)? {
        Some(id) if id == manifest.rsa_key_id => false,
        Some(id) => {
            return Err(BackupError::Keys(format!(
                "the keystore {} holds RSA key {}…, but the vault was sealed for {}…: restore \
                 into a configuration whose keys are the node's",
                keys_dir.display(),
                &id[..16],
                &manifest.rsa_key_id[..16.min(manifest.rsa_key_id.len())]
            )))
        }
        None if manifest.keys_included => {
            if rsa_key_id(&backup_keys)?.as_deref() != Some(manifest.rsa_key_id.as_str()) {
                return Err(BackupError::Keys(
                    "the keys in the backup are not those the vault was sealed for".to_owned(),
                ));
            }
            true
        }
        None => {
            return Err(BackupError::Keys(format!(
                "the backup holds no keys and the keystore {} holds none: copy the node's \
                 keystore there first (the vault cannot be read without it)",
                keys_dir.display()
            )))
        }
    };
    let data_dir = &config.data_dir;
    fresh_dir(data_dir, "the data directory")?;
    if keys_from_backup {
        if keys_dir.exists()
            && fs::read_dir(&keys_dir)
                .map_err(io(&keys_dir))?
                .next()
                .is_some()
        {
            return Err(BackupError::Keys(format!(
                "the keystore {} holds files but no RSA key: give an empty one",
                keys_dir.display()
            )));
        }
        copy_tree(&backup_keys, &keys_dir)?;
    }
    for store in Store::ALL {
        progress(store);
        let entry = manifest
            .stores
            .iter()
            .find(|s| s.name == store.name())
            .ok_or_else(|| BackupError::Refused(format!("the backup has no {store} store")))?;
        let dump_path = from.join(&entry.file);
        let file = fs::File::open(&dump_path).map_err(io(&dump_path))?;
        let target = store.dir(data_dir);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        dump::load(std::io::BufReader::new(file), store.name(), &target).map_err(|source| {
            BackupError::Dump {
                what: format!("loading the {store} store"),
                source,
            }
        })?;
    }
    let consortium = Layout::new(data_dir).dir().to_owned();
    for name in CONSORTIUM_FILES {
        let source = from.join("consortium").join(name);
        if source.is_dir() {
            copy_tree(&source, &consortium.join(name))?;
        } else if source.is_file() {
            copy_file(&source, &consortium.join(name))?;
        }
    }
    // The databases are closed (each `load` flushed and dropped its own): sealed as they are,
    // so that the first start finds them untouched.
    stores::write_seal(data_dir)?;
    Ok(RestoreReport {
        manifest,
        keys_from_backup,
    })
}
