//! What the governance state tells the rest of the node, published on watch channels and
//! refreshed whenever the state, the node's keys or its standing change:
//!
//! - the consortium's link key, unwrapped from what the regulator wrapped for this member
//!   (sealing fingerprints with it);
//! - where the node stands ([`Standing`]: the proxy refuses writes, and the anchorer anchors
//!   nothing, unless it takes part);
//! - the ledger's view ([`LedgerView`]: the institutions' keys are the members' current signing
//!   keys, and the chain verifies against every key each member has held; each epoch's delegates
//!   with the keys they vote with; where the active members' nodes listen; the member's signing
//!   key, for its batches and its votes).

use std::collections::BTreeMap;
use std::sync::Arc;

use fhirseal_consensus::election::schedule::{Config as ElectionConfig, Seat};
use fhirseal_consensus::election::{elect, standing};
use fhirseal_consensus::governance::{GovernanceState, KeyHistory};
use fhirseal_consensus::raft::GovernanceView;
use fhirseal_consensus::{chain_id, DelegateSet, PublicKey, Roster, SigningKey};
use fhirseal_storage::SecretKey;
use tokio::sync::watch;

use crate::consortium::standing::{standing, Standing, Verdict};
use crate::ledger::view::{ElectionSetup, LedgerView, MemberNode, VoterKeys};

/// The receiving ends, for the parts of the node that follow the state.
#[derive(Debug, Clone)]
pub struct Followers {
    /// The link key (sealing).
    pub link_key: watch::Receiver<Option<SecretKey>>,
    /// The node's standing (the proxy's writes).
    pub standing: watch::Receiver<Standing>,
    /// The ledger's rosters and key (the anchorer, `$verify`).
    pub ledger: watch::Receiver<LedgerView>,
}

/// The sending ends, and what they are computed from.
pub struct Participation {
    member: String,
    link_key: watch::Sender<Option<SecretKey>>,
    link_key_version: Option<u32>,
    standing: watch::Sender<Standing>,
    ledger: watch::Sender<LedgerView>,
    keys: KeyHistory,
    signer: Option<SigningKey>,
    voter: Option<Arc<VoterKeys>>,
    verdict: Verdict,
}

impl std::fmt::Debug for Participation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Participation")
            .field("member", &self.member)
            .field("standing", &*self.standing.borrow())
            .finish_non_exhaustive()
    }
}

impl Participation {
    /// Nothing known yet about `member`; `verdict` is what the other voters are taken to think
    /// until asked.
    pub fn new(member: &str, verdict: Verdict) -> (Self, Followers) {
        let empty = Arc::new(Roster::new(no_delegates(), []));
        let view = LedgerView {
            not_taking_part: Standing::Joining.refusal(),
            current: empty.clone(),
            verifying: empty,
            epochs: Arc::new(BTreeMap::new()),
            members: Arc::new(BTreeMap::new()),
            signer: None,
            election: None,
            seats: Arc::new(BTreeMap::new()),
            voter: None,
        };
        let (link_key, link_rx) = watch::channel(None);
        let (standing, standing_rx) = watch::channel(Standing::Joining);
        let (ledger, ledger_rx) = watch::channel(view);
        (
            Self {
                member: member.to_owned(),
                link_key,
                link_key_version: None,
                standing,
                ledger,
                keys: KeyHistory::new(),
                signer: None,
                voter: None,
                verdict,
            },
            Followers {
                link_key: link_rx,
                standing: standing_rx,
                ledger: ledger_rx,
            },
        )
    }

    /// The link key's version this node holds, if any.
    pub fn link_key_version(&self) -> Option<u32> {
        self.link_key_version
    }

    /// Where the node stands now.
    pub fn standing(&self) -> Standing {
        *self.standing.borrow()
    }

    /// Takes the link key of `version`.
    pub fn set_link_key(&mut self, key: SecretKey, version: u32) {
        self.link_key_version = Some(version);
        self.link_key.send_if_modified(|held| {
            let changed = held.as_ref() != Some(&key);
            *held = Some(key);
            changed
        });
    }

    /// Takes the member's current signing key, as found in the keystore.
    pub fn set_signer(&mut self, signer: Option<SigningKey>) {
        self.signer = signer;
    }

    /// Takes the member's election keys (ring vote, beacon), as found in the keystore.
    pub fn set_voter(&mut self, voter: Option<Arc<VoterKeys>>) {
        self.voter = voter;
    }

    /// The election keys the node holds for its member now.
    pub fn voter(&self) -> Option<&Arc<VoterKeys>> {
        self.voter.as_ref()
    }

    /// The signing key the node holds for its member now.
    pub fn signer(&self) -> Option<&SigningKey> {
        self.signer.as_ref()
    }

    /// Takes what the other voters made of this node's certificate.
    pub fn set_verdict(&mut self, verdict: Verdict) {
        self.verdict = verdict;
    }

    /// Recomputes the standing and the ledger's view from `view`'s state and history, and
    /// publishes what changed. Returns the standing when it changed.
    pub fn refresh(&mut self, view: &GovernanceView) -> Option<Standing> {
        let history = view.history();
        if history.len() < self.keys.seen() {
            // Another history (a snapshot replaced it): read it from the start.
            self.keys = KeyHistory::new();
        }
        for request in history.iter().skip(self.keys.seen()) {
            self.keys
                .apply_next(request.command(), request.proposed_at());
        }
        let has_link_key = self.link_key.borrow().is_some();
        let (standing, epochs, members, current, (election, seats)) = view.read(|state| {
            let epochs: BTreeMap<u64, Vec<(String, PublicKey)>> = state
                .epochs()
                .map(|(epoch, record)| (epoch, record.delegates.clone()))
                .collect();
            let election = election_of(state);
            let members: BTreeMap<String, MemberNode> = state
                .members()
                .filter(|m| m.is_active())
                .map(|m| {
                    let node = MemberNode {
                        node_id: m.profile.node_id,
                        address: m.profile.address.clone(),
                        wrapping_key: m.keys().wrapping_key.clone(),
                    };
                    (m.id().to_owned(), node)
                })
                .collect();
            (
                standing(state, &self.member, has_link_key, self.verdict),
                epochs,
                members,
                state.roster(latest_delegates(state)),
                election,
            )
        });
        let delegates = current.delegates().clone();
        let verifying = self.keys.roster(delegates);
        let signer = self.signer.clone();
        let voter = self.voter.clone();
        self.ledger.send_if_modified(|held| {
            let changed = held.not_taking_part != standing.refusal()
                || *held.current != current
                || *held.verifying != verifying
                || *held.epochs != epochs
                || *held.members != members
                || held.signer.as_ref().map(PublicKey::of) != signer.as_ref().map(PublicKey::of)
                || held.election.as_deref() != election.as_ref()
                || *held.seats != seats
                || held.voter.as_ref().map(|v| v.beacon.public())
                    != voter.as_ref().map(|v| v.beacon.public());
            if changed {
                *held = LedgerView {
                    not_taking_part: standing.refusal(),
                    current: Arc::new(current),
                    verifying: Arc::new(verifying),
                    epochs: Arc::new(epochs),
                    members: Arc::new(members),
                    signer,
                    election: election.map(Arc::new),
                    seats: Arc::new(seats),
                    voter,
                };
            }
            changed
        });
        let mut changed = None;
        self.standing.send_if_modified(|held| {
            if *held == standing {
                return false;
            }
            *held = standing;
            changed = Some(standing);
            true
        });
        changed
    }
}

/// The chain's election, when the consortium was founded with one, and every governance epoch's
/// seats with the key each votes with.
#[allow(clippy::type_complexity)]
fn election_of(
    state: &GovernanceState,
) -> (Option<ElectionSetup>, BTreeMap<u64, Vec<(Seat, PublicKey)>>) {
    let params = state.election_params();
    let (Some(consortium), true) = (state.consortium(), params.elects()) else {
        return (None, BTreeMap::new());
    };
    let seats = state
        .epochs()
        .map(|(epoch, record)| {
            let seats = record
                .seats
                .iter()
                .map(|s| {
                    let seat = Seat {
                        member: s.member.clone(),
                        stake: s.stake,
                        vote_key: s.vote_key,
                        beacon_key: s.beacon_key,
                    };
                    (seat, s.signing_key)
                })
                .collect();
            (epoch, seats)
        })
        .collect();
    let founders = state
        .epoch(0)
        .map(|e| e.delegates.iter().map(|(m, _)| m.clone()).collect())
        .unwrap_or_default();
    let setup = ElectionSetup {
        config: ElectionConfig {
            chain: chain_id(consortium).0.to_vec(),
            epoch_blocks: params.epoch_blocks,
            election: elect::Params {
                delegates: state.delegates_k() as usize,
                max_consecutive: params.max_consecutive,
            },
            standing: standing::Params::default(),
        },
        founders,
    };
    (Some(setup), seats)
}

/// The delegates a roster names before any epoch is known: a placeholder key no one holds (a
/// roster needs at least one; nothing is ever certified under it).
fn no_delegates() -> DelegateSet {
    DelegateSet::from_one(PublicKey([0; 32]))
}

/// The newest epoch's delegates, or the placeholder.
fn latest_delegates(state: &fhirseal_consensus::governance::GovernanceState) -> DelegateSet {
    state
        .epochs()
        .last()
        .and_then(|(_, e)| e.delegate_set())
        .unwrap_or_else(no_delegates)
}
