//! The ledger's binary encoding, written by hand.
//!
//! Why by hand: block hashes, transaction hashes, Merkle leaves and signatures are computed over
//! encoded bytes, so every node, in every version, must produce exactly the same bytes for the
//! same value and must refuse any other bytes for it. None of the serde formats in our
//! dependency tree promises that: JSON has no canonical form (key order, number spelling,
//! escapes), and ours is built with `arbitrary_precision` and `preserve_order` for the whole
//! workspace because fhirbolt turns them on; the compact binary formats leave integer widths,
//! lengths and enum tags to configuration and to the shape of the Rust types, so a refactor could
//! silently change a hash. Here the format is a short, explicit specification that the code
//! follows line by line:
//!
//! - a top-level value starts with the format version byte ([`FORMAT_VERSION`]); nested values
//!   do not repeat it;
//! - integers are fixed-width big-endian (`u8`, `u32`, `u64`); timestamps are `u64` milliseconds;
//! - hashes, keys and signatures are their raw bytes (32, 32, 64);
//! - strings are a `u32` byte length then UTF-8; lists are a `u32` count then the items;
//! - enums are a `u8` tag then the variant's fields.
//!
//! The decoder bounds every length (see [`limits`]) before allocating, checks that a count of
//! items can fit in the bytes that remain, and rejects trailing bytes, so one value has exactly
//! one encoding and malformed input costs no more than its own size.

/// Version byte at the start of every top-level encoding.
pub const FORMAT_VERSION: u8 = 1;

/// Upper bounds the decoder enforces (and validation, so that nothing valid is undecodable).
pub mod limits {
    /// Longest string field, in bytes (FHIR ids are at most 64 characters; institution ids,
    /// principals and purposes of use are short codes).
    pub const MAX_NAME_LEN: usize = 256;
    /// Most entries (or events) in one batch.
    pub const MAX_BATCH_ITEMS: usize = 1 << 16;
    /// Most transactions in one block.
    pub const MAX_BLOCK_TRANSACTIONS: usize = 1 << 16;
    /// Most signatures in one finality certificate (the number of delegates is far smaller).
    pub const MAX_SIGNATURES: usize = 1024;
    /// Most siblings in one Merkle path: trees are built over at most 2³² leaves.
    pub const MAX_PROOF_DEPTH: usize = 32;
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The version byte is not one this code reads.
    #[error("unsupported format version {0}")]
    Version(u8),
    /// The input ends in the middle of a field.
    #[error("input ends inside {0}")]
    Truncated(&'static str),
    /// The value ends before the input does.
    #[error("{0} bytes left after the end of the value")]
    TrailingBytes(usize),
    /// A length or count is over its bound, or over what the remaining bytes could hold.
    #[error("{field} has length {len}, over the bound of {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// The length read.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A string field is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// A map's keys are not in strictly increasing order, or a value stored under a key does
    /// not carry that key: the bytes are not the one encoding of any value.
    #[error("{0} is not in canonical form")]
    NotCanonical(&'static str),
    /// An enum tag this code does not know.
    #[error("unknown {field} tag {tag}")]
    UnknownTag {
        /// The enum.
        field: &'static str,
        /// The tag read.
        tag: u8,
    },
}

/// Appends encoded fields to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Fixed-size bytes, written as they are (their size is implied by the field).
    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// A length or count. Validation keeps every length far below `u32::MAX`; saturating
    /// instead would make the decoder refuse the value, never misread it.
    pub(crate) fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }

    pub(crate) fn str(&mut self, s: &str) {
        self.len(s.len());
        self.raw(s.as_bytes());
    }

    /// Variable-length bytes: a `u32` length, then the bytes.
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.raw(b);
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// Empties the buffer, keeping its allocation for the next value.
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads encoded fields from a slice, refusing anything out of bounds.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(field));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A count of items each at least `min_item_len` bytes long: bounded by `max` and by what
    /// the remaining input can hold, so that a forged count cannot make us allocate.
    pub(crate) fn count(
        &mut self,
        field: &'static str,
        max: usize,
        min_item_len: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u32(field)? as usize;
        self.bound(field, n, max, min_item_len)
    }

    /// Checks a count read elsewhere (e.g. in a header) the way [`Reader::count`] does.
    pub(crate) fn bound(
        &self,
        field: &'static str,
        n: usize,
        max: usize,
        min_item_len: usize,
    ) -> Result<usize, DecodeError> {
        let fits = n.saturating_mul(min_item_len) <= self.buf.len();
        if n > max || !fits {
            return Err(DecodeError::TooLong {
                field,
                len: n,
                max: max.min(self.buf.len() / min_item_len.max(1)),
            });
        }
        Ok(n)
    }

    pub(crate) fn string(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<String, DecodeError> {
        let n = self.count(field, max, 1)?;
        let bytes = self.take(n, field)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::NotUtf8(field))
    }

    /// The inverse of [`Writer::bytes`], at most `max` long.
    pub(crate) fn bytes(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<Vec<u8>, DecodeError> {
        let n = self.count(field, max, 1)?;
        Ok(self.take(n, field)?.to_vec())
    }

    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// A value with a body encoding (without the version byte).
pub(crate) trait Wire: Sized {
    /// Lower bound of the body's length, used to bound counts of this item.
    const MIN_LEN: usize;

    fn write(&self, w: &mut Writer);

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

/// Version byte, then the body.
pub(crate) fn to_bytes<T: Wire>(value: &T) -> Vec<u8> {
    let mut w = Writer::with_capacity(64 + T::MIN_LEN);
    w.u8(FORMAT_VERSION);
    value.write(&mut w);
    w.into_bytes()
}

/// The inverse of [`to_bytes`]: refuses another version and trailing bytes.
pub(crate) fn from_bytes<T: Wire>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut r = Reader::new(bytes);
    match r.u8("format version")? {
        FORMAT_VERSION => {}
        other => return Err(DecodeError::Version(other)),
    }
    let value = T::read(&mut r)?;
    r.finish()?;
    Ok(value)
}

/// Gives a top-level type its public `to_bytes` and `from_bytes`.
macro_rules! top_level_encoding {
    ($ty:ty) => {
        impl $ty {
            /// The canonical encoding: format version, then the fields (see [`crate::codec`]).
            pub fn to_bytes(&self) -> Vec<u8> {
                crate::codec::to_bytes(self)
            }

            /// Decodes [`Self::to_bytes`]'s output, refusing any other bytes.
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::codec::DecodeError> {
                crate::codec::from_bytes(bytes)
            }
        }
    };
}
pub(crate) use top_level_encoding;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_big_endian_and_strings_length_prefixed() {
        let mut w = Writer::default();
        w.u32(0x0102_0304);
        w.u64(5);
        w.str("hé");
        assert_eq!(
            w.into_bytes(),
            [1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 3, b'h', 0xc3, 0xa9]
        );
    }

    #[test]
    fn counts_are_bounded_by_limit_and_by_remaining_input() {
        let mut r = Reader::new(&[0, 0, 0, 3, 1, 2, 3]);
        assert_eq!(r.count("items", 10, 1), Ok(3));
        // A count of a billion items with 3 bytes left is refused before anything is allocated.
        let mut r = Reader::new(&[0x40, 0, 0, 0, 1, 2, 3]);
        assert!(matches!(
            r.count("items", usize::MAX, 1),
            Err(DecodeError::TooLong { .. })
        ));
        let mut r = Reader::new(&[0, 0, 0, 11]);
        assert!(matches!(
            r.count("items", 10, 0),
            Err(DecodeError::TooLong { len: 11, .. })
        ));
    }

    #[test]
    fn strings_must_be_utf8_and_within_bounds() {
        let mut r = Reader::new(&[0, 0, 0, 1, 0xff]);
        assert_eq!(r.string("name", 8), Err(DecodeError::NotUtf8("name")));
        let mut r = Reader::new(&[0, 0, 0, 4, b'a', b'b', b'c', b'd']);
        assert!(matches!(
            r.string("name", 3),
            Err(DecodeError::TooLong { .. })
        ));
        let mut r = Reader::new(&[0, 0, 0, 2, b'a']);
        assert!(matches!(
            r.string("name", 3),
            Err(DecodeError::TooLong { .. } | DecodeError::Truncated(_))
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut r = Reader::new(&[7, 8]);
        assert_eq!(r.u8("x"), Ok(7));
        assert_eq!(r.finish(), Err(DecodeError::TrailingBytes(1)));
    }
}
