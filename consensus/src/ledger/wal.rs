//! The write-ahead log's records and their framing, as pure encode and decode: the runtime keeps
//! them in a file (the sidecar) or in memory (the simulation).
//!
//! A log holds one height: a header (`FSWAL` magic, format, height), then records. Each record is
//! `u32 length ‖ 8-byte check ‖ payload`, the check being the first 8 bytes of
//! `SHA-256(payload)`, the payload a [`LogRecord`] in the canonical encoding. Reading stops at the
//! first record that is short or fails its check: a torn tail was never made durable, so nothing
//! was done on the strength of it, and the runtime cuts the file there before appending again.

use sha2::{Digest as _, Sha256};

use crate::bft::{Round, WalEntry};
use crate::block::Block;
use crate::codec::{top_level_encoding, DecodeError, Reader, Wire, Writer};

/// A log read back: its height and its records.
pub type Log = (u64, Vec<LogRecord>);

/// The first bytes of a log: magic and format.
const MAGIC: [u8; 8] = *b"FSWAL\0\0\x01";
/// Header length: magic and height.
pub const HEADER_LEN: usize = 16;
/// Longest record the reader takes (a block body of a few megabytes, with room).
const MAX_RECORD: usize = 64 << 20;

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRecord {
    /// What the engine asked to persist.
    Engine(WalEntry),
    /// A block body the engine's entries name by hash (a proposal received and judged, or our
    /// own), logged before the entry that names it so that a replay finds it.
    Body(Block, Round),
}

top_level_encoding!(LogRecord);

impl Wire for LogRecord {
    const MIN_LEN: usize = 1 + <WalEntry as Wire>::MIN_LEN;

    fn write(&self, w: &mut Writer) {
        match self {
            Self::Engine(entry) => {
                w.u8(0);
                entry.write(w);
            }
            Self::Body(block, round) => {
                w.u8(1);
                w.u32(round.0);
                block.write(w);
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("log record kind")? {
            0 => Ok(Self::Engine(WalEntry::read(r)?)),
            1 => {
                let round = Round(r.u32("log body round")?);
                Ok(Self::Body(Block::read(r)?, round))
            }
            tag => Err(DecodeError::UnknownTag {
                field: "log record kind",
                tag,
            }),
        }
    }
}

/// The header of a log for `height`.
pub fn header(height: u64) -> [u8; HEADER_LEN] {
    let mut out = [0; HEADER_LEN];
    out[..8].copy_from_slice(&MAGIC);
    out[8..].copy_from_slice(&height.to_be_bytes());
    out
}

/// `record` framed for appending.
pub fn frame(record: &LogRecord) -> Vec<u8> {
    let payload = record.to_bytes();
    let check = Sha256::digest(&payload);
    let mut out = Vec::with_capacity(12 + payload.len());
    // Records are bounded far below 4 GiB (blocks by `MAX_BLOCK_TRANSACTIONS` batches).
    out.extend(
        u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend(&check[..8]);
    out.extend(payload);
    out
}

/// What a log's bytes hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The height of the log; `None` when the header is missing or not ours (an empty or
    /// foreign file: nothing to replay).
    pub height: Option<u64>,
    /// The whole records, in order.
    pub records: Vec<LogRecord>,
    /// How many bytes they take, header included: the runtime cuts the file here.
    pub good_len: usize,
    /// Whether bytes followed that were not a whole, checked record (a torn tail).
    pub torn: bool,
}

/// Reads a log, stopping at the first record that is not whole and checked.
pub fn parse(bytes: &[u8]) -> Parsed {
    if bytes.len() < HEADER_LEN || bytes[..8] != MAGIC {
        return Parsed {
            torn: !bytes.is_empty(),
            ..Parsed::default()
        };
    }
    let mut height = [0; 8];
    height.copy_from_slice(&bytes[8..HEADER_LEN]);
    let mut parsed = Parsed {
        height: Some(u64::from_be_bytes(height)),
        records: Vec::new(),
        good_len: HEADER_LEN,
        torn: false,
    };
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        let Some(record) = record_at(&bytes[at..]) else {
            parsed.torn = true;
            break;
        };
        let (record, len) = record;
        parsed.records.push(record);
        at += len;
        parsed.good_len = at;
    }
    parsed
}

fn record_at(bytes: &[u8]) -> Option<(LogRecord, usize)> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if len > MAX_RECORD {
        return None;
    }
    let check = bytes.get(4..12)?;
    let payload = bytes.get(12..12 + len)?;
    if Sha256::digest(payload)[..8] != *check {
        return None;
    }
    let record = LogRecord::from_bytes(payload).ok()?;
    Some((record, 12 + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bft::Timer;

    fn records() -> Vec<LogRecord> {
        vec![
            LogRecord::Engine(WalEntry::Timeout(Timer::Propose(Round(0)))),
            LogRecord::Engine(WalEntry::Timeout(Timer::Prevote(Round(3)))),
        ]
    }

    fn log(height: u64, records: &[LogRecord]) -> Vec<u8> {
        let mut bytes = header(height).to_vec();
        for r in records {
            bytes.extend(frame(r));
        }
        bytes
    }

    #[test]
    fn a_log_reads_back_whole() {
        let bytes = log(7, &records());
        let parsed = parse(&bytes);
        assert_eq!(parsed.height, Some(7));
        assert_eq!(parsed.records, records());
        assert_eq!(parsed.good_len, bytes.len());
        assert!(!parsed.torn);
    }

    #[test]
    fn reading_stops_at_a_torn_or_damaged_record() {
        let bytes = log(7, &records());
        let first = HEADER_LEN + frame(&records()[0]).len();
        for cut in first..bytes.len() {
            let parsed = parse(&bytes[..cut]);
            assert_eq!(parsed.records, records()[..1], "cut at {cut}");
            assert_eq!(parsed.good_len, first);
            assert_eq!(parsed.torn, cut > first);
        }
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        let parsed = parse(&damaged);
        assert_eq!(parsed.records.len(), 1);
        assert!(parsed.torn);
    }

    #[test]
    fn an_empty_or_foreign_file_has_nothing_to_replay() {
        assert_eq!(parse(&[]), Parsed::default());
        let parsed = parse(b"not a log at all, no");
        assert_eq!(parsed.height, None);
        assert!(parsed.torn);
    }
}
