//! Who may sign what: Ed25519 public keys, the delegate set with its quorum, and the roster of
//! institutions' keys.

use std::collections::BTreeMap;
use std::sync::Arc;

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use crate::error::{Error, Result};
use crate::hash::hex;

/// An Ed25519 public key as its 32 bytes.
///
/// Kept as bytes (not a decompressed `VerifyingKey`) so that decoding blocks and proofs is cheap
/// and total; the point is decompressed only when a signature is checked.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The public half of `key`.
    pub fn of(key: &SigningKey) -> Self {
        Self(key.verifying_key().to_bytes())
    }

    /// Checks `signature` over `message` with `verify_strict`, which refuses small-order keys and
    /// non-canonical signatures: one message and key then have one valid signature, so a
    /// signature cannot be altered into another valid one (what a double-signing proof and a
    /// transaction hash that covers the signature rely on).
    pub(crate) fn verify(
        &self,
        message: &[u8],
        signature: &Signature,
        what: &'static str,
    ) -> Result<()> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| Error::BadKey(what))?;
        key.verify_strict(message, signature)
            .map_err(|_| Error::BadSignature(what))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", hex(&self.0))
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// Whether `keys` are in strictly ascending order, so each appears once: how certificates keep
/// one signature per delegate and one encoding.
pub(crate) fn ascending_distinct<'a>(keys: impl IntoIterator<Item = &'a PublicKey>) -> bool {
    let mut previous: Option<&PublicKey> = None;
    for key in keys {
        if previous.is_some_and(|p| p >= key) {
            return false;
        }
        previous = Some(key);
    }
    true
}

/// Signatures needed to finalize a block among `delegates` delegates: `⌊2K/3⌋ + 1`, which is
/// `2f + 1` for `K = 3f + 1` (and 1 for a single delegate). Any two sets of that size share more
/// than `f` delegates, so two conflicting blocks cannot both be finalized unless more than `f`
/// delegates sign twice.
pub fn quorum(delegates: usize) -> usize {
    2 * delegates / 3 + 1
}

/// The delegates of an epoch, in schedule order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelegateSet {
    keys: Vec<PublicKey>,
}

impl DelegateSet {
    /// A set of distinct delegates; at least one.
    pub fn new(keys: Vec<PublicKey>) -> Result<Self> {
        if keys.is_empty() {
            return Err(Error::InvalidDelegates("no delegate"));
        }
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::InvalidDelegates("a delegate appears twice"));
        }
        Ok(Self { keys })
    }

    /// A set of one delegate.
    pub fn from_one(key: PublicKey) -> Self {
        Self { keys: vec![key] }
    }

    /// The keys, in schedule order.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Whether `key` is a delegate.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.keys.contains(key)
    }

    /// How many delegates there are (K).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true: a delegate set has at least one member.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Signatures needed to finalize a block: see [`quorum`].
    pub fn quorum(&self) -> usize {
        quorum(self.keys.len())
    }
}

/// Who may sign at one epoch: the delegates, and each institution's batch-signing keys.
///
/// An institution may have several keys: the one it signs with now (the last given) and those
/// it rotated away from, under which its earlier batches were signed. A roster for checking
/// what is submitted now names current keys only; one for verifying a chain from genesis names
/// every key each institution has held. The embedded single-node consortium has one institution
/// and one delegate ([`Roster::single_node`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    delegates: DelegateSet,
    // Shared: one set of institution keys serves the rosters of every epoch.
    institutions: Arc<BTreeMap<String, Vec<PublicKey>>>,
}

impl Roster {
    /// A roster from its delegates and `(institution id, key)` pairs; an institution named more
    /// than once has each of its keys, the last one given being its current key.
    pub fn new(
        delegates: DelegateSet,
        institutions: impl IntoIterator<Item = (String, PublicKey)>,
    ) -> Self {
        let mut map: BTreeMap<String, Vec<PublicKey>> = BTreeMap::new();
        for (institution, key) in institutions {
            let keys = map.entry(institution).or_default();
            keys.retain(|k| *k != key);
            keys.push(key);
        }
        Self {
            delegates,
            institutions: Arc::new(map),
        }
    }

    /// The same institutions' keys with other delegates (those of another epoch); cheap.
    pub fn with_delegates(&self, delegates: DelegateSet) -> Self {
        Self {
            delegates,
            institutions: Arc::clone(&self.institutions),
        }
    }

    /// The consortium of one: `institution` signs batches with `institution_key`, and the node's
    /// `delegate` key is the only delegate.
    pub fn single_node(
        institution: impl Into<String>,
        institution_key: PublicKey,
        delegate: PublicKey,
    ) -> Self {
        Self {
            delegates: DelegateSet {
                keys: vec![delegate],
            },
            institutions: Arc::new([(institution.into(), vec![institution_key])].into()),
        }
    }

    /// The delegates.
    pub fn delegates(&self) -> &DelegateSet {
        &self.delegates
    }

    /// The key `institution` signs batches with now.
    pub fn institution_key(&self, institution: &str) -> Option<&PublicKey> {
        self.institutions.get(institution).and_then(|k| k.last())
    }

    /// Every key of `institution` this roster accepts, oldest first.
    pub fn institution_keys(&self, institution: &str) -> Option<&[PublicKey]> {
        self.institutions.get(institution).map(Vec::as_slice)
    }

    /// Checks that `signer` is one of `institution`'s keys.
    pub fn check_signer(&self, institution: &str, signer: &PublicKey) -> Result<()> {
        let keys = self
            .institution_keys(institution)
            .ok_or_else(|| Error::UnknownInstitution(institution.to_owned()))?;
        if !keys.contains(signer) {
            return Err(Error::WrongSigner(institution.to_owned()));
        }
        Ok(())
    }
}

/// The roster in force at each epoch: what chain verification asks when it walks epochs.
/// A single [`Roster`] answers for every epoch; [`EpochRosters`] answers from the delegates the
/// governance state recorded for each epoch.
pub trait Rosters {
    /// The roster of `epoch`, if known.
    fn roster(&self, epoch: u64) -> Option<&Roster>;

    /// The roster that certifies the block at `height` whose header names governance epoch
    /// `epoch`: that epoch's, unless an election chose the delegates of the height (see
    /// `ledger::ElectedRosters`).
    fn roster_at(&self, height: u64, epoch: u64) -> Option<std::borrow::Cow<'_, Roster>> {
        let _ = height;
        self.roster(epoch).map(std::borrow::Cow::Borrowed)
    }
}

impl Rosters for Roster {
    fn roster(&self, _epoch: u64) -> Option<&Roster> {
        Some(self)
    }
}

impl<R: Rosters + ?Sized> Rosters for &R {
    fn roster(&self, epoch: u64) -> Option<&Roster> {
        (**self).roster(epoch)
    }

    fn roster_at(&self, height: u64, epoch: u64) -> Option<std::borrow::Cow<'_, Roster>> {
        (**self).roster_at(height, epoch)
    }
}

/// One roster per epoch: each epoch's delegates with the same institutions' keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochRosters {
    by_epoch: BTreeMap<u64, Roster>,
}

impl EpochRosters {
    /// The rosters of `institutions`' keys with each epoch's delegates.
    pub fn new(
        institutions: &Roster,
        epochs: impl IntoIterator<Item = (u64, DelegateSet)>,
    ) -> Self {
        Self {
            by_epoch: epochs
                .into_iter()
                .map(|(epoch, delegates)| (epoch, institutions.with_delegates(delegates)))
                .collect(),
        }
    }

    /// The newest epoch, if any.
    pub fn latest(&self) -> Option<(u64, &Roster)> {
        self.by_epoch.iter().next_back().map(|(e, r)| (*e, r))
    }
}

impl Rosters for EpochRosters {
    fn roster(&self, epoch: u64) -> Option<&Roster> {
        self.by_epoch.get(&epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_is_two_f_plus_one_of_three_f_plus_one() {
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(7), 5);
        assert_eq!(quorum(10), 7);
        // Between the 3f+1 sizes the quorum still intersects in more than f.
        assert_eq!(quorum(2), 2);
        assert_eq!(quorum(3), 3);
        assert_eq!(quorum(5), 4);
    }

    #[test]
    fn delegate_sets_are_non_empty_and_distinct() {
        let a = PublicKey([1; 32]);
        assert!(DelegateSet::new(vec![]).is_err());
        assert!(DelegateSet::new(vec![a, a]).is_err());
        assert_eq!(DelegateSet::new(vec![a]).unwrap().quorum(), 1);
    }

    #[test]
    fn an_institution_keeps_the_keys_it_rotated_away_from() {
        let (old, new, other) = (PublicKey([1; 32]), PublicKey([2; 32]), PublicKey([3; 32]));
        let delegates = DelegateSet::new(vec![PublicKey([9; 32])]).unwrap();
        let roster = Roster::new(delegates, [("h1".to_owned(), old), ("h1".to_owned(), new)]);
        assert_eq!(roster.institution_key("h1"), Some(&new));
        assert!(roster.check_signer("h1", &old).is_ok());
        assert!(roster.check_signer("h1", &new).is_ok());
        assert!(matches!(
            roster.check_signer("h1", &other),
            Err(Error::WrongSigner(_))
        ));
        assert!(matches!(
            roster.check_signer("h2", &new),
            Err(Error::UnknownInstitution(_))
        ));
    }

    #[test]
    fn strict_verification_refuses_a_small_order_key() {
        use ed25519_dalek::Signer as _;
        let key = SigningKey::from_bytes(&[7; 32]);
        let signature = key.sign(b"m");
        let public = PublicKey::of(&key);
        assert!(public.verify(b"m", &signature, "test").is_ok());
        assert!(public.verify(b"n", &signature, "test").is_err());
        // The identity point (a small-order key) decompresses but must never verify.
        let mut identity = [0; 32];
        identity[0] = 1;
        assert!(PublicKey(identity)
            .verify(b"m", &signature, "test")
            .is_err());
    }
}
