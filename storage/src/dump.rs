//! A sled database copied whole into one file, and loaded back into a new database: what
//! `fhirseal backup` writes and `fhirseal restore` reads.
//!
//! sled's files cannot be copied while the process that holds them runs (they change under
//! the copy, and sled's lock forbids a second opener), and they are not a format to keep: the
//! dump is every tree, key and value, in a plain framing that ends with its own SHA-256, so
//! that a damaged backup is refused before anything is restored from it.
//!
//! ```text
//! "FSDUMP1\n" ‖ u16 len ‖ store name
//! ( 'T' ‖ u32 len ‖ tree name  |  'E' ‖ u32 len ‖ key ‖ u32 len ‖ value )*
//! 'Z' ‖ u64 trees ‖ u64 entries ‖ SHA-256 of every byte before it
//! ```
//!
//! [`dump`] reads the database as it is: a copy of a running node holds
//! [`crate::pause::pause`] meanwhile, so that no write lands halfway.

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"FSDUMP1\n";
const TREE: u8 = b'T';
const ENTRY: u8 = b'E';
const END: u8 = b'Z';
/// Largest key or value a dump holds (sled's own limit is far above what the stores write).
const MAX_FIELD: u32 = 1 << 30;

/// Why a dump cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a fhirseal dump, or damaged: {0}")]
    Damaged(&'static str),
    #[error("the dump is of the {found} store, not of the {expected}")]
    WrongStore { found: String, expected: String },
    #[error("{0} exists already: a dump is loaded into a new database only")]
    Exists(String),
}

/// What a dump holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpSummary {
    pub trees: u64,
    pub entries: u64,
    /// The SHA-256 the dump ends with.
    pub sha256: [u8; 32],
}

/// Writes and hashes.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Hashing<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hash.update(bytes);
        self.inner.write_all(bytes)
    }

    fn field(&mut self, bytes: &[u8]) -> Result<(), DumpError> {
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|n| *n <= MAX_FIELD)
            .ok_or(DumpError::Damaged("a key or value over 1 GiB"))?;
        self.put(&len.to_be_bytes())?;
        Ok(self.put(bytes)?)
    }
}

/// Writes every tree of `db` to `out` as the dump of store `store`.
pub fn dump(db: &sled::Db, store: &str, out: impl Write) -> Result<DumpSummary, DumpError> {
    let mut w = Hashing {
        inner: out,
        hash: Sha256::new(),
    };
    w.put(MAGIC)?;
    let name = u16::try_from(store.len()).map_err(|_| DumpError::Damaged("store name"))?;
    w.put(&name.to_be_bytes())?;
    w.put(store.as_bytes())?;
    let mut names = db.tree_names();
    names.sort();
    let (mut trees, mut entries) = (0u64, 0u64);
    for name in names {
        let tree = db.open_tree(&name)?;
        w.put(&[TREE])?;
        w.field(&name)?;
        trees += 1;
        for item in tree.iter() {
            let (key, value) = item?;
            w.put(&[ENTRY])?;
            w.field(&key)?;
            w.field(&value)?;
            entries += 1;
        }
    }
    w.put(&[END])?;
    w.put(&trees.to_be_bytes())?;
    w.put(&entries.to_be_bytes())?;
    let sha256: [u8; 32] = w.hash.clone().finalize().into();
    w.inner.write_all(&sha256)?;
    w.inner.flush()?;
    Ok(DumpSummary {
        trees,
        entries,
        sha256,
    })
}

/// One item of a dump.
enum Item {
    Tree(Vec<u8>),
    Entry(Vec<u8>, Vec<u8>),
}

/// Reads a dump item by item, hashing as it goes.
struct DumpReader<R> {
    inner: R,
    hash: Sha256,
    store: String,
    trees: u64,
    entries: u64,
}

impl<R: Read> DumpReader<R> {
    fn new(mut inner: R) -> Result<Self, DumpError> {
        let mut hash = Sha256::new();
        let mut magic = [0u8; 8];
        read_exact(&mut inner, &mut magic)?;
        if &magic != MAGIC {
            return Err(DumpError::Damaged("it does not begin as a fhirseal dump"));
        }
        hash.update(magic);
        let mut len = [0u8; 2];
        read_exact(&mut inner, &mut len)?;
        hash.update(len);
        let mut name = vec![0u8; usize::from(u16::from_be_bytes(len))];
        read_exact(&mut inner, &mut name)?;
        hash.update(&name);
        let store =
            String::from_utf8(name).map_err(|_| DumpError::Damaged("store name is not UTF-8"))?;
        Ok(Self {
            inner,
            hash,
            store,
            trees: 0,
            entries: 0,
        })
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), DumpError> {
        read_exact(&mut self.inner, buf)?;
        self.hash.update(&*buf);
        Ok(())
    }

    fn field(&mut self) -> Result<Vec<u8>, DumpError> {
        let mut len = [0u8; 4];
        self.take(&mut len)?;
        let len = u32::from_be_bytes(len);
        if len > MAX_FIELD {
            return Err(DumpError::Damaged(
                "a field longer than any the stores write",
            ));
        }
        let mut bytes = vec![0u8; len as usize];
        self.take(&mut bytes)?;
        Ok(bytes)
    }

    /// The next item, or the summary once the end is read and its hash checked.
    fn next(&mut self) -> Result<Result<Item, DumpSummary>, DumpError> {
        let mut tag = [0u8; 1];
        self.take(&mut tag)?;
        match tag[0] {
            TREE => {
                self.trees += 1;
                Ok(Ok(Item::Tree(self.field()?)))
            }
            ENTRY => {
                self.entries += 1;
                let key = self.field()?;
                let value = self.field()?;
                Ok(Ok(Item::Entry(key, value)))
            }
            END => {
                let mut counts = [0u8; 16];
                self.take(&mut counts)?;
                let computed: [u8; 32] = self.hash.clone().finalize().into();
                let mut stored = [0u8; 32];
                read_exact(&mut self.inner, &mut stored)?;
                if stored != computed {
                    return Err(DumpError::Damaged("its SHA-256 does not match its content"));
                }
                let mut trees = [0u8; 8];
                let mut entries = [0u8; 8];
                trees.copy_from_slice(&counts[..8]);
                entries.copy_from_slice(&counts[8..]);
                if u64::from_be_bytes(trees) != self.trees
                    || u64::from_be_bytes(entries) != self.entries
                {
                    return Err(DumpError::Damaged("its counts do not match its content"));
                }
                let mut rest = [0u8; 1];
                if self.inner.read(&mut rest)? != 0 {
                    return Err(DumpError::Damaged("bytes after its end"));
                }
                Ok(Err(DumpSummary {
                    trees: self.trees,
                    entries: self.entries,
                    sha256: stored,
                }))
            }
            _ => Err(DumpError::Damaged("an item of unknown kind")),
        }
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), DumpError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => DumpError::Damaged("it is cut short"),
        _ => DumpError::Io(e),
    })
}

/// Reads the dump whole and checks its hash and counts, storing nothing; returns the store it
/// is of and what it holds.
pub fn verify(input: impl Read) -> Result<(String, DumpSummary), DumpError> {
    let mut reader = DumpReader::new(input)?;
    loop {
        if let Err(summary) = reader.next()? {
            return Ok((reader.store, summary));
        }
    }
}

/// Loads the dump of store `store` into a new sled database at `path` (which must not exist),
/// flushed before this returns. Check the dump with [`verify`] first: a dump damaged halfway
/// leaves a half-loaded database behind (the caller removes it).
pub fn load(input: impl Read, store: &str, path: &Path) -> Result<DumpSummary, DumpError> {
    if path.exists() {
        return Err(DumpError::Exists(path.display().to_string()));
    }
    let mut reader = DumpReader::new(input)?;
    if reader.store != store {
        return Err(DumpError::WrongStore {
            found: reader.store.clone(),
            expected: store.to_owned(),
        });
    }
    let db = sled::Config::new().path(path).open()?;
    let mut tree: Option<sled::Tree> = None;
    let mut batch = sled::Batch::default();
    let mut batched = 0usize;
    let summary = loop {
        match reader.next()? {
            Ok(Item::Tree(name)) => {
                if let Some(t) = &tree {
                    t.apply_batch(std::mem::take(&mut batch))?;
                    batched = 0;
                }
                tree = Some(db.open_tree(name)?);
            }
            Ok(Item::Entry(key, value)) => {
                if tree.is_none() {
                    return Err(DumpError::Damaged("an entry before any tree"));
                }
                batch.insert(key, value);
                batched += 1;
                if batched == 4096 {
                    if let Some(t) = &tree {
                        t.apply_batch(std::mem::take(&mut batch))?;
                    }
                    batched = 0;
                }
            }
            Err(summary) => break summary,
        }
    };
    if let Some(t) = &tree {
        t.apply_batch(batch)?;
    }
    db.flush()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_loads_back_whole_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("a")).unwrap();
        db.insert(b"k", b"default tree").unwrap();
        let t = db.open_tree("records").unwrap();
        for i in 0u32..5000 {
            t.insert(i.to_be_bytes(), vec![(i % 7) as u8; 40]).unwrap();
        }
        db.open_tree("empty").unwrap();
        let mut bytes = Vec::new();
        let summary = dump(&db, "vault", &mut bytes).unwrap();
        assert_eq!(summary.entries, 5001);
        assert_eq!(
            verify(bytes.as_slice()).unwrap(),
            ("vault".to_owned(), summary)
        );

        let copy = dir.path().join("b");
        assert!(matches!(
            load(bytes.as_slice(), "ledger", &copy),
            Err(DumpError::WrongStore { .. })
        ));
        load(bytes.as_slice(), "vault", &copy).unwrap();
        let loaded = crate::open::reopen(&copy);
        assert_eq!(loaded.checksum().unwrap(), db.checksum().unwrap());
        assert_eq!(loaded.open_tree("records").unwrap().len(), 5000);
        assert!(loaded.tree_names().iter().any(|n| n.as_ref() == b"empty"));
        assert!(matches!(
            load(bytes.as_slice(), "vault", &copy),
            Err(DumpError::Exists(_))
        ));

        // One flipped byte anywhere, or a cut, is found.
        for at in [3, 20, bytes.len() / 2, bytes.len() - 40, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            assert!(verify(damaged.as_slice()).is_err(), "flip at {at}");
        }
        assert!(matches!(
            verify(&bytes[..bytes.len() - 10]),
            Err(DumpError::Damaged(_))
        ));
    }
}
