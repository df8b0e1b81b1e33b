//! A delegate that double signs on purpose, for the election's process tests only.
//!
//! `FHIRSEAL_TEST_DOUBLE_SIGN=H` makes the node, whenever it sends a prevote for a block at a
//! height of at least `H`, also send a nil prevote for the same height and round signed with the
//! same key: two votes for one slot, which the other delegates' engines keep as evidence and
//! report on the chain. Every time, not once: a prevote re-sent for a height the others have
//! finalized already (a node catching up after its restart) convicts nobody. Unset, nothing
//! changes (one `OnceLock` read per prevote sent).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use fhirseal_consensus::bft::{ConsensusMessage, Vote, VoteKind};
use fhirseal_consensus::{Hash256, SigningKey};

/// The environment variable that arms the double sign.
const DOUBLE_SIGN_VAR: &str = "FHIRSEAL_TEST_DOUBLE_SIGN";

fn armed_from() -> Option<u64> {
    static FROM: OnceLock<Option<u64>> = OnceLock::new();
    *FROM.get_or_init(|| std::env::var(DOUBLE_SIGN_VAR).ok()?.trim().parse().ok())
}

/// Whether the first conflicting vote was logged.
static LOGGED: AtomicBool = AtomicBool::new(false);

/// The conflicting vote to send beside `message`, when armed.
pub(crate) fn conflicting(
    message: &ConsensusMessage,
    chain: &Hash256,
    key: impl FnOnce(&fhirseal_consensus::PublicKey) -> Option<SigningKey>,
) -> Option<ConsensusMessage> {
    let from = armed_from()?;
    let ConsensusMessage::Vote(vote) = message else {
        return None;
    };
    if vote.kind != VoteKind::Prevote || vote.block.is_none() || vote.height < from {
        return None;
    }
    let key = key(&vote.delegate)?;
    if !LOGGED.swap(true, Ordering::SeqCst) {
        tracing::warn!(
            height = vote.height,
            "{DOUBLE_SIGN_VAR}: sending conflicting prevotes on purpose"
        );
    }
    Some(ConsensusMessage::Vote(Vote::sign(
        VoteKind::Prevote,
        vote.height,
        vote.round,
        None,
        chain,
        &key,
    )))
}
