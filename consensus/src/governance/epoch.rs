//! Governance epochs (the delegates and the seats each one begins with) and the election's
//! parameters, fixed at the consortium's founding.

use crate::codec::{DecodeError, Reader, Wire, Writer};
use crate::governance::limits;
use crate::governance::member::MemberId;
use crate::keys::{DelegateSet, PublicKey};
use crate::tx::Timestamp;

/// One epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    /// When it began (the log entry's time).
    pub started_at: Timestamp,
    /// Its delegates in schedule order, each with the signing key it had when the epoch began
    /// (the key its votes are checked against for the whole epoch): the K active members with
    /// the highest stake then, ties by member id. Genesis opens epoch 0 with the regulator alone.
    pub delegates: Vec<(MemberId, PublicKey)>,
    /// Every active member when the epoch began, in member-id order, with its stake and keys
    /// then: what the election snapshots (its voters' ring, beacon contributors and candidates).
    /// An epoch begins whenever these would change, so the seats of the newest epoch are always
    /// the active members as they are now.
    pub seats: Vec<EpochSeat>,
}

impl Epoch {
    /// The delegates as a [`DelegateSet`] (their keys, in schedule order); `None` when two
    /// delegates share a key, which admissions and rotations refuse.
    pub fn delegate_set(&self) -> Option<DelegateSet> {
        DelegateSet::new(self.delegates.iter().map(|(_, key)| *key).collect()).ok()
    }

    /// The seat of `member`, if it was active when the epoch began.
    pub fn seat(&self, member: &str) -> Option<&EpochSeat> {
        self.seats
            .binary_search_by(|seat| seat.member.as_str().cmp(member))
            .ok()
            .map(|i| &self.seats[i])
    }
}

/// An active member as an epoch saw it when it began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochSeat {
    /// The member.
    pub member: MemberId,
    /// Its stake.
    pub stake: u64,
    /// Its Ed25519 key ([`crate::governance::MemberKeys::signing_key`]).
    pub signing_key: PublicKey,
    /// Its ring-vote key ([`crate::governance::MemberKeys::vote_key`]).
    pub vote_key: [u8; 32],
    /// Its beacon key ([`crate::governance::MemberKeys::beacon_key`]).
    pub beacon_key: [u8; 32],
}

impl Wire for EpochSeat {
    const MIN_LEN: usize = 4 + 8 + 32 + 32 + 32;

    fn write(&self, w: &mut Writer) {
        w.str(&self.member);
        w.u64(self.stake);
        w.raw(&self.signing_key.0);
        w.raw(&self.vote_key);
        w.raw(&self.beacon_key);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            member: r.string("seat member", limits::MAX_NAME_LEN)?,
            stake: r.u64("seat stake")?,
            signing_key: PublicKey(r.array("seat signing key")?),
            vote_key: r.array("seat vote key")?,
            beacon_key: r.array("seat beacon key")?,
        })
    }
}

impl Wire for Epoch {
    const MIN_LEN: usize = 8 + 4 + 4;

    fn write(&self, w: &mut Writer) {
        w.u64(self.started_at.0);
        w.len(self.delegates.len());
        for (member, key) in &self.delegates {
            w.str(member);
            w.raw(&key.0);
        }
        w.len(self.seats.len());
        for seat in &self.seats {
            seat.write(w);
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let started_at = Timestamp(r.u64("epoch start")?);
        let k = r.count("epoch delegates", limits::MAX_DELEGATES, 4 + 32)?;
        let delegates = (0..k)
            .map(|_| {
                Ok((
                    r.string("epoch delegate", limits::MAX_NAME_LEN)?,
                    PublicKey(r.array("epoch delegate key")?),
                ))
            })
            .collect::<Result<_, DecodeError>>()?;
        let n = r.count("epoch seats", limits::MAX_MEMBERS, EpochSeat::MIN_LEN)?;
        let mut seats: Vec<EpochSeat> = Vec::with_capacity(n);
        for _ in 0..n {
            let seat = EpochSeat::read(r)?;
            // Seats are written in member-id order, once each: any other order is another
            // encoding of the same epoch (and would break `Epoch::seat`).
            if seats.last().is_some_and(|last| last.member >= seat.member) {
                return Err(DecodeError::NotCanonical("epoch seats"));
            }
            seats.push(seat);
        }
        Ok(Self {
            started_at,
            delegates,
            seats,
        })
    }
}

/// The DPoS election's parameters: set by the genesis command, the same for the consortium's
/// whole life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ElectionParams {
    /// E: blocks per ledger epoch, at least [`ElectionParams::MIN_EPOCH_BLOCKS`]; 0 means no
    /// election: the ledger's delegates are those of the governance epochs, the K active
    /// members with the highest stake.
    pub epoch_blocks: u64,
    /// M: epochs in a row a delegate may serve before it sits one out (while others can serve);
    /// at least 1.
    pub max_consecutive: u32,
}

impl ElectionParams {
    /// The shortest election epoch: a commit, a reveal and a closed phase of a block each.
    pub const MIN_EPOCH_BLOCKS: u64 = 3;

    /// No election, M = 2: what a consortium founded without election parameters has.
    pub const NONE: Self = Self {
        epoch_blocks: 0,
        max_consecutive: 2,
    };

    /// Whether a genesis may carry them: E is 0 or at least
    /// [`ElectionParams::MIN_EPOCH_BLOCKS`], and M at least 1.
    pub fn is_valid(&self) -> bool {
        (self.epoch_blocks == 0 || self.epoch_blocks >= Self::MIN_EPOCH_BLOCKS)
            && self.max_consecutive >= 1
    }

    /// Whether the delegates are elected on the chain (E > 0).
    pub fn elects(&self) -> bool {
        self.epoch_blocks > 0
    }
}

impl Default for ElectionParams {
    fn default() -> Self {
        Self::NONE
    }
}

impl Wire for ElectionParams {
    const MIN_LEN: usize = 8 + 4;

    fn write(&self, w: &mut Writer) {
        w.u64(self.epoch_blocks);
        w.u32(self.max_consecutive);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            epoch_blocks: r.u64("epoch blocks")?,
            max_consecutive: r.u32("max consecutive epochs")?,
        })
    }
}
