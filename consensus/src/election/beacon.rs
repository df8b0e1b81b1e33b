//! The election beacon: unpredictable, and unbiasable but for withholding.
//!
//! Each epoch every active member contributes a VRF output over (chain, epoch, previous seed)
//! with its beacon key (schnorrkel's Ristretto VRF). A VRF output is *unique* for its key and
//! input — unlike an ordinary signature, which a signer could make many of and choose among —
//! so a member cannot grind. Contributions go on the chain in two phases: first a commitment
//! (the hash of the output and proof), then, once the commit phase has closed, the reveal;
//! a reveal that does not match its commitment, or whose proof does not verify, does not count,
//! and a commitment without its reveal is provable absence, penalized.
//!
//! The seed of epoch `e` is SHA-256 over the previous seed and the valid reveals in member
//! order. It chooses the delegates of epoch `e + 2`, with weights snapshotted before the commit
//! phase of `e` opens, so a last revealer who can already compute the seed cannot change the
//! weights it is applied to. What remains: `k` colluding members who withhold their reveals can
//! choose among `2^k` seeds (each subset of withheld reveals gives one), and pay the absence
//! penalty for each withholding; a threshold-BLS beacon (drand-style) removes that choice, and is
//! the step after this one.

use schnorrkel::vrf::{VRFPreOut, VRFProof};
use schnorrkel::{signing_context, ExpansionMode, Keypair, MiniSecretKey, PublicKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

/// The VRF's signing context.
const CONTEXT: &[u8] = b"fhirseal/beacon/v1";
/// What a VRF output is turned into bytes under.
const OUTPUT: &[u8] = b"fhirseal/beacon/output";
/// Domain of a commitment.
const COMMIT_DOMAIN: &[u8] = b"fhirseal/beacon/commit/v1";
/// Domain of a seed.
const SEED_DOMAIN: &[u8] = b"fhirseal/beacon/seed/v1";

/// Why a contribution does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BeaconError {
    #[error("the member's beacon key is not a valid key")]
    InvalidKey,
    #[error("the reveal does not match the member's commitment")]
    NotCommitted,
    #[error("the reveal's VRF proof does not verify for this member, epoch and seed")]
    InvalidProof,
    #[error("no randomness from the operating system")]
    Randomness,
}

/// What one epoch's contributions are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeaconInput<'a> {
    pub chain: &'a [u8],
    pub epoch: u64,
    pub previous_seed: [u8; 32],
}

impl BeaconInput<'_> {
    fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.chain.len() + 48);
        m.extend_from_slice(&(self.chain.len() as u64).to_be_bytes());
        m.extend_from_slice(self.chain);
        m.extend_from_slice(&self.epoch.to_be_bytes());
        m.extend_from_slice(&self.previous_seed);
        m
    }
}

/// A member's beacon key. Its secret never leaves this type but through `to_bytes`.
pub struct BeaconKey(Keypair);

impl std::fmt::Debug for BeaconKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BeaconKey")
            .field(&hex(&self.public()))
            .finish()
    }
}

impl BeaconKey {
    /// A fresh key from the operating system's randomness.
    pub fn generate() -> Result<BeaconKey, BeaconError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|_| BeaconError::Randomness)?;
        let key = BeaconKey::from_seed(&seed);
        seed.zeroize();
        key
    }

    /// The key of a 32-byte seed (kept as the member's secret).
    pub fn from_seed(seed: &[u8; 32]) -> Result<BeaconKey, BeaconError> {
        let mini = MiniSecretKey::from_bytes(seed).map_err(|_| BeaconError::InvalidKey)?;
        Ok(BeaconKey(mini.expand_to_keypair(ExpansionMode::Ed25519)))
    }

    /// The public key, as governance state records it.
    pub fn public(&self) -> [u8; 32] {
        self.0.public.to_bytes()
    }

    /// This member's contribution for `input`: the same every time it is asked.
    pub fn contribute(&self, input: &BeaconInput<'_>) -> Reveal {
        let message = input.message();
        let (inout, proof, _) = self.0.vrf_sign(signing_context(CONTEXT).bytes(&message));
        Reveal {
            output: inout.to_preout().to_bytes(),
            proof: proof.to_bytes(),
        }
    }
}

/// A revealed contribution: the VRF pre-output and its proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reveal {
    pub output: [u8; 32],
    pub proof: [u8; 64],
}

impl Reveal {
    /// The commitment a member posts in the commit phase: it binds the member, the epoch and
    /// the VRF output. Not the proof: schnorrkel's proofs are randomized, while the output is
    /// unique for the key and input, so the member can compute it again at reveal time and
    /// any valid proof of that output opens the commitment.
    pub fn commitment(&self, member: &str, input: &BeaconInput<'_>) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(COMMIT_DOMAIN);
        h.update(input.message());
        h.update((member.len() as u64).to_be_bytes());
        h.update(member.as_bytes());
        h.update(self.output);
        h.finalize().into()
    }
}

/// Checks `reveal` by `member` (beacon key `public`) against its `commitment`; returns the
/// VRF output's bytes, what the seed is computed over.
pub fn check_reveal(
    member: &str,
    public: &[u8; 32],
    input: &BeaconInput<'_>,
    commitment: &[u8; 32],
    reveal: &Reveal,
) -> Result<[u8; 32], BeaconError> {
    if reveal.commitment(member, input) != *commitment {
        return Err(BeaconError::NotCommitted);
    }
    let key = PublicKey::from_bytes(public).map_err(|_| BeaconError::InvalidKey)?;
    let preout = VRFPreOut::from_bytes(&reveal.output).map_err(|_| BeaconError::InvalidProof)?;
    let proof = VRFProof::from_bytes(&reveal.proof).map_err(|_| BeaconError::InvalidProof)?;
    let message = input.message();
    let (inout, _) = key
        .vrf_verify(signing_context(CONTEXT).bytes(&message), &preout, &proof)
        .map_err(|_| BeaconError::InvalidProof)?;
    Ok(inout.make_bytes::<[u8; 32]>(OUTPUT))
}

/// The next seed: SHA-256 over the previous seed and the valid outputs, in member order
/// (`outputs` sorted by member id; each member once).
pub fn next_seed(previous: &[u8; 32], epoch: u64, outputs: &[(&str, [u8; 32])]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(SEED_DOMAIN);
    h.update(previous);
    h.update(epoch.to_be_bytes());
    h.update((outputs.len() as u64).to_be_bytes());
    for (member, output) in outputs {
        h.update((member.len() as u64).to_be_bytes());
        h.update(member.as_bytes());
        h.update(output);
    }
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(epoch: u64) -> BeaconInput<'static> {
        BeaconInput {
            chain: b"consortium-test",
            epoch,
            previous_seed: [7; 32],
        }
    }

    #[test]
    fn a_contribution_is_unique_and_verifies() {
        let key = BeaconKey::generate().unwrap();
        let a = key.contribute(&input(3));
        let b = key.contribute(&input(3));
        // The output is the key's and the input's alone (the proof is randomized).
        assert_eq!(a.output, b.output);
        let commitment = a.commitment("h1", &input(3));
        let out_a = check_reveal("h1", &key.public(), &input(3), &commitment, &a).unwrap();
        let out_b = check_reveal(
            "h1",
            &key.public(),
            &input(3),
            &b.commitment("h1", &input(3)),
            &b,
        )
        .unwrap();
        assert_eq!(out_a, out_b);
        // Another epoch or seed gives another output.
        assert_ne!(key.contribute(&input(4)).output, a.output);
    }

    #[test]
    fn reveals_that_do_not_match_or_verify_do_not_count() {
        let key = BeaconKey::generate().unwrap();
        let other = BeaconKey::generate().unwrap();
        let reveal = key.contribute(&input(1));
        let commitment = reveal.commitment("h1", &input(1));
        // Committed by another member, or for another epoch.
        assert_eq!(
            check_reveal("h2", &key.public(), &input(1), &commitment, &reveal),
            Err(BeaconError::NotCommitted)
        );
        assert_eq!(
            check_reveal("h1", &key.public(), &input(2), &commitment, &reveal),
            Err(BeaconError::NotCommitted)
        );
        // Another key's output, committed honestly, does not verify under this member's key.
        let forged = other.contribute(&input(1));
        assert_eq!(
            check_reveal(
                "h1",
                &key.public(),
                &input(1),
                &forged.commitment("h1", &input(1)),
                &forged
            ),
            Err(BeaconError::InvalidProof)
        );
        // A changed output with the same proof does not verify either.
        let mut changed = reveal;
        changed.output[0] ^= 1;
        assert!(check_reveal(
            "h1",
            &key.public(),
            &input(1),
            &changed.commitment("h1", &input(1)),
            &changed
        )
        .is_err());
    }

    #[test]
    fn the_seed_depends_on_every_output_and_its_order() {
        let a = ("h1", [1; 32]);
        let b = ("h2", [2; 32]);
        let seed = next_seed(&[0; 32], 5, &[a, b]);
        assert_ne!(seed, next_seed(&[0; 32], 5, &[a]));
        assert_ne!(seed, next_seed(&[0; 32], 5, &[b, a]));
        assert_ne!(seed, next_seed(&[1; 32], 5, &[a, b]));
        assert_ne!(seed, next_seed(&[0; 32], 6, &[a, b]));
        assert_eq!(seed, next_seed(&[0; 32], 5, &[a, b]));
    }
}
