//! What crosses between nodes for the ledger, on the consortium's mutual-TLS listener:
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /bft/messages` | a [list](encode_list) of `ConsensusMessage`s | 202 |
//! | `POST /bft/block` | round (u32) ‖ a `Block` | 202 |
//! | `POST /ledger/block` | a `FinalizedBlock` | 202 |
//! | `POST /ledger/submit` | a list of `Transaction`s | 200, a JSON list of answers |
//! | `GET /ledger/sync?from=H` | — | 200, a list of `FinalizedBlock`s from height H |
//!
//! Every item is its canonical encoding (`fhirseal_consensus::codec`); a list is a `u32` count,
//! then each item as a `u32` length and its bytes.

use fhirseal_consensus::bft::Round;
use fhirseal_consensus::Block;

/// Most items in one list.
pub(crate) const MAX_ITEMS: usize = 4096;
/// Most blocks one sync answer carries.
pub(crate) const SYNC_BLOCKS: usize = 64;

/// A list of encoded items.
pub(crate) fn encode_list<I: AsRef<[u8]>>(items: impl IntoIterator<Item = I>) -> Vec<u8> {
    let items: Vec<I> = items.into_iter().collect();
    let mut out = Vec::new();
    out.extend(u32::try_from(items.len()).unwrap_or(u32::MAX).to_be_bytes());
    for item in &items {
        let item = item.as_ref();
        out.extend(u32::try_from(item.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend(item);
    }
    out
}

/// The items of a list; `None` when the bytes are not one.
pub(crate) fn decode_list(bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let count = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if count > MAX_ITEMS {
        return None;
    }
    let mut at = 4;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        out.push(bytes.get(at..at.checked_add(len)?)?);
        at += len;
    }
    (at == bytes.len()).then_some(out)
}

/// A proposed block's body with its round.
pub(crate) fn encode_body(block: &Block, round: Round) -> Vec<u8> {
    let mut out = round.0.to_be_bytes().to_vec();
    out.extend(block.to_bytes());
    out
}

/// [`encode_body`]'s input back.
pub(crate) fn decode_body(bytes: &[u8]) -> Option<(Block, Round)> {
    let round = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
    Some((Block::from_bytes(bytes.get(4..)?).ok()?, Round(round)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_refuse_anything_else() {
        let bytes = encode_list([b"ab".as_slice(), b"", b"xyz"]);
        let items = decode_list(&bytes).unwrap();
        assert_eq!(items, vec![b"ab".as_slice(), b"", b"xyz"]);
        assert!(decode_list(&bytes[..bytes.len() - 1]).is_none());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_list(&longer).is_none());
        assert!(decode_list(&[0xff; 4]).is_none());
    }
}
