//! Linkable ring signatures (LSAG, Liu–Wei–Wong 2004) over Ristretto255, for anonymous
//! ballots: a member signs as "one of the epoch's eligible voters" without saying which, and a
//! second ballot by the same member in the same epoch carries the same key image, so it is
//! linked and refused. `consensus/LSAG.md` is the specification; this is its code.
//!
//! Written here rather than taken from a crate: `nazgul` verifies against the ring carried in
//! the signature (a signature over a ring of fresh keys verifies), its key image does not depend
//! on the epoch (one key's ballots link across epochs), and it panics on a short response
//! vector; the other LSAG/CLSAG crates are tied to Monero's rings or to dalek 1.x.
//!
//! What differs from the paper, on purpose:
//! - the key image is `x · H_e` with `H_e = H_p("fhirseal/vote/v1" ‖ chain ‖ epoch)`, one base
//!   point per epoch, instead of `x · H_p(P)`: ballots of one key link within an epoch and do
//!   not across epochs;
//! - every challenge hashes a transcript that binds the domain, the chain, the epoch, the whole
//!   ring, the ballot and the key image, so a signature is valid for nothing else;
//! - [`verify`] takes the ring (the canonical one, from governance state) as an argument; the
//!   signature carries none.

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT as G;
use curve25519_dalek::ristretto::{
    CompressedRistretto, RistrettoPoint, VartimeRistrettoPrecomputation,
};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{Identity, VartimePrecomputedMultiscalarMul};
use sha2::{Digest, Sha512};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Domain of the epoch's key-image base point.
const VOTE_DOMAIN: &[u8] = b"fhirseal/vote/v1";
/// Domain of the challenges.
const CHALLENGE_DOMAIN: &[u8] = b"fhirseal/lsag/v1";
/// Largest ring accepted: every eligible voter of an epoch; far above a consortium's size.
pub const MAX_RING: usize = 4096;

/// Why a ring signature cannot be made or does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("the ring is empty")]
    EmptyRing,
    #[error("the ring holds more than {MAX_RING} keys")]
    RingTooLarge,
    #[error("the ring holds the key at position {0} twice")]
    DuplicateKey(usize),
    #[error("the key at position {0} of the ring is not a valid point")]
    InvalidKey(usize),
    #[error("the signer's key is not in the ring")]
    NotInRing,
    #[error("the signature has {found} responses for a ring of {ring}")]
    WrongLength { found: usize, ring: usize },
    #[error("a scalar of the signature is not canonical")]
    NonCanonicalScalar,
    #[error("the key image is not a valid point")]
    InvalidKeyImage,
    #[error("the signature does not verify for this ring, epoch and ballot")]
    Invalid,
    #[error("the encoded signature is malformed: {0}")]
    Malformed(&'static str),
    #[error("no randomness from the operating system")]
    Randomness,
}

/// The epoch a ballot belongs to: ballots are linkable within it, unlinkable across epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope<'a> {
    /// The chain (consortium) the ballot is for.
    pub chain: &'a [u8],
    pub epoch: u64,
}

impl Scope<'_> {
    /// `H_e`: the epoch's key-image base point, whose discrete log no one knows.
    fn base(&self) -> RistrettoPoint {
        let mut h = Sha512::new();
        h.update(VOTE_DOMAIN);
        h.update((self.chain.len() as u64).to_be_bytes());
        h.update(self.chain);
        h.update(self.epoch.to_be_bytes());
        RistrettoPoint::from_uniform_bytes(&h.finalize().into())
    }
}

/// A member's secret vote key. Zeroized when dropped; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct VoteSecret(Scalar);

impl std::fmt::Debug for VoteSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VoteSecret(…)")
    }
}

impl VoteSecret {
    /// A fresh key from the operating system's randomness.
    pub fn generate() -> Result<VoteSecret, RingError> {
        Ok(VoteSecret(random_scalar()?))
    }

    /// The key of 32 bytes; `None` unless they are a canonical, nonzero scalar.
    pub fn from_bytes(bytes: [u8; 32]) -> Option<VoteSecret> {
        let scalar: Option<Scalar> = Scalar::from_canonical_bytes(bytes).into();
        scalar.filter(|s| *s != Scalar::ZERO).map(VoteSecret)
    }

    /// The 32 bytes of the key (handle as a secret).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public vote key, as governance state records it (a compressed Ristretto point).
    pub fn public(&self) -> [u8; 32] {
        (self.0 * G).compress().to_bytes()
    }

    /// The key image of this key in `scope`: what a ballot of this member in this epoch
    /// carries, whichever ballot it is.
    pub fn key_image(&self, scope: &Scope<'_>) -> [u8; 32] {
        (self.0 * scope.base()).compress().to_bytes()
    }
}

/// A linkable ring signature: the first challenge, one response per ring member, and the key
/// image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingSignature {
    pub challenge: [u8; 32],
    pub responses: Vec<[u8; 32]>,
    pub key_image: [u8; 32],
}

impl RingSignature {
    /// `challenge ‖ key image ‖ count (u32, big-endian) ‖ responses`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(68 + 32 * self.responses.len());
        out.extend_from_slice(&self.challenge);
        out.extend_from_slice(&self.key_image);
        out.extend_from_slice(&(self.responses.len() as u32).to_be_bytes());
        for response in &self.responses {
            out.extend_from_slice(response);
        }
        out
    }

    /// The inverse of [`RingSignature::to_bytes`]; refuses anything but exactly that shape.
    pub fn from_bytes(bytes: &[u8]) -> Result<RingSignature, RingError> {
        let take32 = |at: usize| -> Result<[u8; 32], RingError> {
            bytes
                .get(at..at + 32)
                .and_then(|s| s.try_into().ok())
                .ok_or(RingError::Malformed("truncated"))
        };
        let challenge = take32(0)?;
        let key_image = take32(32)?;
        let count = bytes
            .get(64..68)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
            .ok_or(RingError::Malformed("truncated"))?;
        if count == 0 || count > MAX_RING {
            return Err(RingError::Malformed("response count out of bounds"));
        }
        if bytes.len() != 68 + 32 * count {
            return Err(RingError::Malformed(
                "length does not match the response count",
            ));
        }
        let responses = (0..count)
            .map(|i| take32(68 + 32 * i))
            .collect::<Result<_, _>>()?;
        Ok(RingSignature {
            challenge,
            responses,
            key_image,
        })
    }
}

/// The ring's points, checked: nonempty, bounded, valid, no key twice.
fn ring_points(ring: &[[u8; 32]]) -> Result<Vec<RistrettoPoint>, RingError> {
    if ring.is_empty() {
        return Err(RingError::EmptyRing);
    }
    if ring.len() > MAX_RING {
        return Err(RingError::RingTooLarge);
    }
    let mut sorted: Vec<&[u8; 32]> = ring.iter().collect();
    sorted.sort();
    if let Some(pair) = sorted.windows(2).find(|w| w[0] == w[1]) {
        let position = ring.iter().position(|k| k == pair[0]).unwrap_or(0);
        return Err(RingError::DuplicateKey(position));
    }
    ring.iter()
        .enumerate()
        .map(|(i, key)| {
            CompressedRistretto(*key)
                .decompress()
                .filter(|p| *p != RistrettoPoint::identity())
                .ok_or(RingError::InvalidKey(i))
        })
        .collect()
}

/// What every challenge of one signature hashes first: the domain, the scope, the ring, the
/// ballot and the key image.
fn transcript(scope: &Scope<'_>, ring: &[[u8; 32]], ballot: &[u8], key_image: &[u8; 32]) -> Sha512 {
    let mut h = Sha512::new();
    h.update(CHALLENGE_DOMAIN);
    h.update((scope.chain.len() as u64).to_be_bytes());
    h.update(scope.chain);
    h.update(scope.epoch.to_be_bytes());
    h.update((ring.len() as u64).to_be_bytes());
    for key in ring {
        h.update(key);
    }
    h.update((ballot.len() as u64).to_be_bytes());
    h.update(ballot);
    h.update(key_image);
    h
}

/// The challenge after one ring position's commitments `L` and `R`. They enter the hash as the
/// encodings of `2L` and `2R` (doubling is a bijection of the prime-order group, so the
/// encoding is as binding), which `double_and_compress_batch` makes with one field inversion
/// for both instead of one each.
fn challenge(prefix: &Sha512, l: &RistrettoPoint, r: &RistrettoPoint) -> Scalar {
    let mut h = prefix.clone();
    for encoded in RistrettoPoint::double_and_compress_batch([l, r]) {
        h.update(encoded.as_bytes());
    }
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
}

/// The commitments of one ring position: `L = s·G + c·P` and `R = s·H_e + c·I`, the second
/// through a table of `(H_e, I)` made once per signature.
fn commitments(
    s: Scalar,
    c: Scalar,
    point: &RistrettoPoint,
    image_table: &VartimeRistrettoPrecomputation,
) -> (RistrettoPoint, RistrettoPoint) {
    let l = RistrettoPoint::vartime_double_scalar_mul_basepoint(&c, point, &s);
    let r = image_table.vartime_multiscalar_mul([s, c]);
    (l, r)
}

fn random_scalar() -> Result<Scalar, RingError> {
    let mut wide = [0u8; 64];
    getrandom::fill(&mut wide).map_err(|_| RingError::Randomness)?;
    let scalar = Scalar::from_bytes_mod_order_wide(&wide);
    wide.zeroize();
    Ok(scalar)
}

/// Signs `ballot` in `scope` as one of `ring` (which must hold `secret`'s public key).
pub fn sign(
    scope: &Scope<'_>,
    ring: &[[u8; 32]],
    secret: &VoteSecret,
    ballot: &[u8],
) -> Result<RingSignature, RingError> {
    let points = ring_points(ring)?;
    let own = secret.public();
    let signer = ring
        .iter()
        .position(|k| *k == own)
        .ok_or(RingError::NotInRing)?;
    let n = points.len();
    let base = scope.base();
    let image = secret.0 * base;
    let key_image = image.compress().to_bytes();
    let prefix = transcript(scope, ring, ballot, &key_image);
    let mut challenges = vec![Scalar::ZERO; n];
    let mut responses = vec![Scalar::ZERO; n];
    let mut alpha = random_scalar()?;
    challenges[(signer + 1) % n] = challenge(&prefix, &(alpha * G), &(alpha * base));
    let table = VartimeRistrettoPrecomputation::new([base, image]);
    for step in 1..n {
        let i = (signer + step) % n;
        responses[i] = random_scalar()?;
        let (l, r) = commitments(responses[i], challenges[i], &points[i], &table);
        challenges[(i + 1) % n] = challenge(&prefix, &l, &r);
    }
    responses[signer] = alpha - challenges[signer] * secret.0;
    alpha.zeroize();
    Ok(RingSignature {
        challenge: challenges[0].to_bytes(),
        responses: responses.iter().map(Scalar::to_bytes).collect(),
        key_image,
    })
}

/// Verifies `signature` over `ballot` in `scope` against `ring`, the canonical ring of the
/// epoch's eligible voters (never a ring the signature brings). Returns the key image, by
/// which a second ballot of the same member in the same epoch is known.
pub fn verify(
    scope: &Scope<'_>,
    ring: &[[u8; 32]],
    ballot: &[u8],
    signature: &RingSignature,
) -> Result<[u8; 32], RingError> {
    let points = ring_points(ring)?;
    if signature.responses.len() != points.len() {
        return Err(RingError::WrongLength {
            found: signature.responses.len(),
            ring: points.len(),
        });
    }
    let canonical = |bytes: &[u8; 32]| -> Result<Scalar, RingError> {
        Option::<Scalar>::from(Scalar::from_canonical_bytes(*bytes))
            .ok_or(RingError::NonCanonicalScalar)
    };
    let image = CompressedRistretto(signature.key_image)
        .decompress()
        .filter(|p| *p != RistrettoPoint::identity())
        .ok_or(RingError::InvalidKeyImage)?;
    let base = scope.base();
    let prefix = transcript(scope, ring, ballot, &signature.key_image);
    let first = canonical(&signature.challenge)?;
    let table = VartimeRistrettoPrecomputation::new([base, image]);
    let mut c = first;
    for (point, response) in points.iter().zip(&signature.responses) {
        let (l, r) = commitments(canonical(response)?, c, point, &table);
        c = challenge(&prefix, &l, &r);
    }
    if c != first {
        return Err(RingError::Invalid);
    }
    Ok(signature.key_image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CHAIN: &[u8] = b"consortium-test";

    fn scope(epoch: u64) -> Scope<'static> {
        Scope {
            chain: CHAIN,
            epoch,
        }
    }

    fn keys(n: usize) -> (Vec<VoteSecret>, Vec<[u8; 32]>) {
        let secrets: Vec<VoteSecret> = (0..n).map(|_| VoteSecret::generate().unwrap()).collect();
        let ring = secrets.iter().map(VoteSecret::public).collect();
        (secrets, ring)
    }

    #[test]
    fn a_member_signs_and_the_ring_verifies() {
        let (secrets, ring) = keys(5);
        let sig = sign(&scope(7), &ring, &secrets[3], b"ballot: h2").unwrap();
        let image = verify(&scope(7), &ring, b"ballot: h2", &sig).unwrap();
        assert_eq!(image, secrets[3].key_image(&scope(7)));
        let decoded = RingSignature::from_bytes(&sig.to_bytes()).unwrap();
        assert_eq!(decoded, sig);
        // A ring of one is a plain (linkable) signature.
        let (one, single) = keys(1);
        let sig = sign(&scope(1), &single, &one[0], b"x").unwrap();
        assert!(verify(&scope(1), &single, b"x", &sig).is_ok());
    }

    #[test]
    fn wrong_ballot_ring_epoch_or_chain_fail() {
        let (secrets, ring) = keys(4);
        let sig = sign(&scope(7), &ring, &secrets[0], b"ballot: h2").unwrap();
        assert_eq!(
            verify(&scope(7), &ring, b"ballot: h3", &sig),
            Err(RingError::Invalid)
        );
        assert_eq!(
            verify(&scope(8), &ring, b"ballot: h2", &sig),
            Err(RingError::Invalid)
        );
        let other_chain = Scope {
            chain: b"another",
            epoch: 7,
        };
        assert_eq!(
            verify(&other_chain, &ring, b"ballot: h2", &sig),
            Err(RingError::Invalid)
        );
        // The canonical ring with one key replaced, reordered, or cut short.
        let (_, strangers) = keys(4);
        let mut replaced = ring.clone();
        replaced[2] = strangers[2];
        assert_eq!(
            verify(&scope(7), &replaced, b"ballot: h2", &sig),
            Err(RingError::Invalid)
        );
        let mut reordered = ring.clone();
        reordered.swap(1, 2);
        assert_eq!(
            verify(&scope(7), &reordered, b"ballot: h2", &sig),
            Err(RingError::Invalid)
        );
        assert!(matches!(
            verify(&scope(7), &ring[..3], b"ballot: h2", &sig),
            Err(RingError::WrongLength { .. })
        ));
    }

    #[test]
    fn a_ring_of_strangers_proves_nothing() {
        // Someone outside the canonical ring signs over a ring of keys of their own: it
        // verifies against their ring, never against the epoch's.
        let (_, canonical) = keys(4);
        let (strangers, their_ring) = keys(4);
        let sig = sign(&scope(7), &their_ring, &strangers[1], b"ballot").unwrap();
        assert!(verify(&scope(7), &their_ring, b"ballot", &sig).is_ok());
        assert_eq!(
            verify(&scope(7), &canonical, b"ballot", &sig),
            Err(RingError::Invalid)
        );
        // And no one signs over a ring that lacks their key.
        assert_eq!(
            sign(&scope(7), &canonical, &strangers[0], b"ballot"),
            Err(RingError::NotInRing)
        );
    }

    #[test]
    fn tampered_signatures_fail_without_panicking() {
        let (secrets, ring) = keys(3);
        let sig = sign(&scope(2), &ring, &secrets[1], b"b").unwrap();
        let bytes = sig.to_bytes();
        for i in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[i] ^= 0x01;
            if let Ok(t) = RingSignature::from_bytes(&tampered) {
                assert!(verify(&scope(2), &ring, b"b", &t).is_err(), "byte {i}");
            }
        }
        // A short responses vector, a non-canonical scalar, an identity key image.
        let mut short = sig.clone();
        short.responses.pop();
        assert!(matches!(
            verify(&scope(2), &ring, b"b", &short),
            Err(RingError::WrongLength { found: 2, ring: 3 })
        ));
        let mut wide = sig.clone();
        wide.responses[0] = [0xff; 32];
        assert_eq!(
            verify(&scope(2), &ring, b"b", &wide),
            Err(RingError::NonCanonicalScalar)
        );
        let mut identity = sig.clone();
        identity.key_image = RistrettoPoint::identity().compress().to_bytes();
        assert_eq!(
            verify(&scope(2), &ring, b"b", &identity),
            Err(RingError::InvalidKeyImage)
        );
        assert!(RingSignature::from_bytes(&[]).is_err());
        assert!(RingSignature::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        // Rings: empty, a key twice, a key that is no point.
        assert_eq!(
            verify(&scope(2), &[], b"b", &sig),
            Err(RingError::EmptyRing)
        );
        let doubled = [ring[0], ring[1], ring[0]];
        assert_eq!(
            verify(&scope(2), &doubled, b"b", &sig),
            Err(RingError::DuplicateKey(0))
        );
        let invalid = [ring[0], ring[1], [0xee; 32]];
        assert_eq!(
            verify(&scope(2), &invalid, b"b", &sig),
            Err(RingError::InvalidKey(2))
        );
    }

    #[test]
    fn double_ballots_link_within_an_epoch_and_not_across() {
        let (secrets, ring) = keys(6);
        let a = sign(&scope(9), &ring, &secrets[4], b"for h1").unwrap();
        let b = sign(&scope(9), &ring, &secrets[4], b"for h2").unwrap();
        let other = sign(&scope(9), &ring, &secrets[5], b"for h1").unwrap();
        let next = sign(&scope(10), &ring, &secrets[4], b"for h1").unwrap();
        assert_eq!(a.key_image, b.key_image);
        assert_ne!(a.key_image, other.key_image);
        assert_ne!(a.key_image, next.key_image);
        // Nothing else of the two ballots is alike.
        assert_ne!(a.challenge, b.challenge);
    }

    #[test]
    fn which_member_signed_is_no_better_than_a_guess() {
        // A distinguisher that sees the signature and the ring and guesses the signer from the
        // response whose value is highest (any fixed rule will do): over many signatures by
        // members chosen at random, it is right about 1 time in n.
        let (secrets, ring) = keys(4);
        let trials = 2_000;
        let mut right = 0;
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        for t in 0..trials {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let signer = (rng % 4) as usize;
            let ballot = format!("ballot {t}");
            let sig = sign(&scope(3), &ring, &secrets[signer], ballot.as_bytes()).unwrap();
            let guess = (0..4).max_by_key(|i| sig.responses[*i]).unwrap_or(0);
            right += usize::from(guess == signer);
        }
        // Chance is 500 of 2,000 (σ ≈ 19): a rule that learned anything would stand far off.
        assert!((400..=600).contains(&right), "{right} of {trials} right");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn any_member_of_any_ring_signs_and_only_that_ballot_verifies(
            n in 1usize..10,
            signer in 0usize..10,
            epoch in any::<u64>(),
            ballot in proptest::collection::vec(any::<u8>(), 0..64),
            flip in any::<u8>(),
        ) {
            let (secrets, ring) = keys(n);
            let signer = signer % n;
            let s = Scope { chain: CHAIN, epoch };
            let sig = sign(&s, &ring, &secrets[signer], &ballot).unwrap();
            prop_assert_eq!(verify(&s, &ring, &ballot, &sig), Ok(secrets[signer].key_image(&s)));
            let mut other = ballot.clone();
            other.push(flip);
            prop_assert_eq!(verify(&s, &ring, &other, &sig), Err(RingError::Invalid));
        }
    }
}
