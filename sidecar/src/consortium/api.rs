//! What a node's API answers, in JSON: the status, a submission's outcome, the join desk's
//! answers. The CLI reads the same types.

use fhirseal_consensus::governance::{
    GovernanceState, MemberStatus as Standing, Outcome, RaftRole,
};
use fhirseal_consensus::raft::GovernanceNode;
use serde::{Deserialize, Serialize};

use crate::consortium::files::{hex, kind_name, TrustedPeer};

/// `GET /consortium/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The node that answers.
    pub node: NodeStatus,
    /// Its Raft view.
    pub raft: RaftStatus,
    /// The consortium's name, once genesis is applied here.
    pub consortium: Option<String>,
    /// The regulator's member id.
    pub regulator: Option<String>,
    /// The current epoch.
    pub epoch: u64,
    /// How delegates are chosen: K and the election's parameters.
    pub election: ElectionStatus,
    /// With an election, what this node's chain has made of it (once its ledger runs).
    #[serde(default)]
    pub standing: Option<ElectionStanding>,
    /// The link key's current version.
    pub link_key_version: u32,
    /// Every member ever admitted.
    pub members: Vec<MemberStatus>,
    /// The certificate revocation list.
    pub revoked_certificates: Vec<RevokedStatus>,
    /// How many commands were ever refused.
    pub refusals_total: u64,
    /// The last refusals, oldest first.
    pub refusals: Vec<RefusalStatus>,
}

/// The election as a node's chain has made it: penalties and rewards are functions of the
/// chain, so every member shows the same for the same height.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionStanding {
    /// The ledger epoch of the height being decided.
    pub ledger_epoch: u64,
    /// The delegates of that height.
    pub delegates: Vec<String>,
    /// Every member's standing, by member.
    pub members: Vec<MemberStanding>,
    /// What the last closed epoch decided.
    pub last_closed: Option<ClosedEpoch>,
}

/// One member's standing in the election.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStanding {
    pub member: String,
    /// Its stake after slashing.
    pub stake: u64,
    /// Its reputation (per mille).
    pub reputation: u16,
    /// No candidate before this ledger epoch.
    pub jailed_until: u64,
    /// Never a candidate again (double signing).
    pub tombstoned: bool,
}

/// What one epoch's close decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedEpoch {
    pub epoch: u64,
    /// The delegates elected for `epoch + 2`, in proposer order.
    pub elected: Vec<String>,
    /// Penalties and rewards, in words.
    pub changes: Vec<String>,
}

/// What `tracker` (as of the ledger's tip) says, with the current height's `delegates`.
pub fn election_standing(
    tracker: &fhirseal_consensus::ledger::ElectionTracker,
    delegates: Vec<String>,
) -> ElectionStanding {
    use fhirseal_consensus::election::standing::Change;
    let state = tracker.state();
    let members = state
        .standings()
        .iter()
        .map(|(member, s)| MemberStanding {
            member: member.clone(),
            stake: s.stake,
            reputation: s.reputation,
            jailed_until: s.jailed_until,
            tombstoned: s.tombstoned,
        })
        .collect();
    let last_closed = state.closed().last().map(|c| ClosedEpoch {
        epoch: c.epoch,
        elected: c.elected.clone(),
        changes: c
            .changes
            .iter()
            .map(|change| match change {
                Change::Slash { member, amount } => format!("{member} slashed by {amount}"),
                Change::Tombstone { member } => format!("{member} tombstoned"),
                Change::Jail { member, until } => format!("{member} jailed until epoch {until}"),
                Change::Reputation { member, delta } => format!("{member} reputation {delta:+}"),
            })
            .collect(),
    });
    ElectionStanding {
        ledger_epoch: tracker.ledger_epoch(state.height() + 1),
        delegates,
        members,
        last_closed,
    }
}

/// How the shared ledger's delegates are chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionStatus {
    /// K: how many delegates an epoch has.
    pub delegates: u32,
    /// E: blocks per election epoch on the chain; 0: no election (the K active members with
    /// the highest stake).
    pub epoch_blocks: u64,
    /// M: epochs in a row a delegate may serve before sitting one out.
    pub max_consecutive: u32,
}

/// The answering node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its member.
    pub member: String,
    /// Its Raft id.
    pub node_id: u64,
    /// Where it listens.
    pub address: String,
    /// SHA-256 of the certificate it presents now.
    pub certificate: String,
    /// The version of the link key it holds, if any.
    pub link_key_version: Option<u32>,
    /// Where it stands: `active` (it writes and anchors), `joining`, `checking`, `suspended`,
    /// `revoked` or `cut-off` (see [`crate::consortium::standing::Standing`]).
    pub standing: String,
}

/// The node's Raft view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// Leader, Follower, Candidate, Learner or Shutdown.
    pub state: String,
    /// The leader it knows.
    pub leader: Option<u64>,
    /// Its term.
    pub term: u64,
    /// Its last log index.
    pub last_log_index: Option<u64>,
    /// The last index it applied.
    pub last_applied: Option<u64>,
    /// The voters of its membership (both configurations during a joint change).
    pub voters: Vec<u64>,
    /// The learners of its membership.
    pub learners: Vec<u64>,
}

/// One member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// regulator, hospital or provider.
    pub kind: String,
    /// active, suspended or revoked.
    pub status: String,
    /// Raft node id.
    pub node_id: u64,
    /// Node address.
    pub address: String,
    /// voter or learner.
    pub role: String,
    /// Stake.
    pub stake: u64,
    /// Reputation.
    pub reputation: u64,
    /// Last used command sequence number.
    pub last_sequence: u64,
    /// SHA-256 of its certificate, hex.
    pub certificate: String,
    /// Its Ed25519 key, hex.
    pub signing_key: String,
    /// The link key version wrapped for it.
    pub link_key_version: Option<u32>,
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedStatus {
    /// SHA-256, hex.
    pub certificate: String,
    /// Whose it was.
    pub member: String,
    /// Why.
    pub reason: String,
}

/// One refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalStatus {
    /// Who signed.
    pub signer: String,
    /// Its sequence number.
    pub sequence: u64,
    /// The command's kind.
    pub command: String,
    /// Why it was refused.
    pub reason: String,
}

/// `POST /consortium/submit`: what became of the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitAnswer {
    /// `accepted` or `refused`.
    pub outcome: String,
    /// The refusal, by name (`NotRegulator`, …).
    pub code: Option<String>,
    /// The refusal, in words.
    pub error: Option<String>,
}

impl SubmitAnswer {
    /// The answer for `outcome`.
    pub fn of(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Accepted => Self {
                outcome: "accepted".into(),
                code: None,
                error: None,
            },
            Outcome::Refused(reason) => Self {
                outcome: "refused".into(),
                code: Some(format!("{reason:?}")),
                error: Some(reason.to_string()),
            },
        }
    }
}

/// `GET /join`: what an applicant needs to sign its request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeskInfo {
    /// The consortium's name.
    pub consortium: String,
}

/// `POST /join`: the request is pending; these are the members to trust until the admission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAnswer {
    /// The consortium's name.
    pub consortium: String,
    /// Its active members' nodes.
    pub trust: Vec<TrustedPeer>,
}

/// A pending join request, as `GET /consortium/joins` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingJoin {
    /// The applicant's member id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// The node id it asks for.
    pub node_id: u64,
    /// Its node's address.
    pub address: String,
    /// SHA-256 of the TLS certificate the request names (hex): what the applicant tells the
    /// regulator apart, and `admit --fingerprint` must repeat.
    pub certificate: String,
}

/// `POST /consortium/invites`: an invite for the regulator's node to keep. The token itself
/// never reaches the node: the CLI made it and shows it once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRequest {
    /// The member id it lets in.
    pub member: String,
    /// SHA-256 of the token, hex.
    pub token_sha256: String,
    /// When it expires (milliseconds since the Unix epoch).
    pub expires_at: u64,
}

/// The status of `node` as it stands now.
pub fn status(node: &GovernanceNode, own: NodeStatus) -> Status {
    let metrics = node.raft().metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let raft = RaftStatus {
        state: format!("{:?}", metrics.state),
        leader: metrics.current_leader,
        term: metrics.current_term,
        last_log_index: metrics.last_log_index,
        last_applied: node.state().last_applied_index(),
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
    };
    node.state().read(|state| of_state(state, own, raft))
}

fn of_state(state: &GovernanceState, node: NodeStatus, raft: RaftStatus) -> Status {
    let members = state
        .members()
        .map(|m| MemberStatus {
            id: m.id().to_owned(),
            name: m.profile.name.clone(),
            kind: kind_name(m.profile.kind).to_owned(),
            status: match m.status {
                Standing::Active => "active",
                Standing::Suspended => "suspended",
                Standing::Revoked => "revoked",
            }
            .to_owned(),
            node_id: m.profile.node_id,
            address: m.profile.address.clone(),
            role: match m.profile.raft_role {
                RaftRole::Voter => "voter",
                RaftRole::Learner => "learner",
            }
            .to_owned(),
            stake: m.profile.stake,
            reputation: m.profile.reputation,
            last_sequence: m.last_sequence,
            certificate: hex(&m.keys().tls_certificate),
            signing_key: m.keys().signing_key.to_string(),
            link_key_version: state.wrapped_link_key(m.id()).map(|k| k.version),
        })
        .collect();
    Status {
        node,
        raft,
        consortium: state.consortium().map(str::to_owned),
        regulator: state.regulator().map(|m| m.id().to_owned()),
        epoch: state.current_epoch(),
        election: {
            let params = state.election_params();
            ElectionStatus {
                delegates: state.delegates_k(),
                epoch_blocks: params.epoch_blocks,
                max_consecutive: params.max_consecutive,
            }
        },
        standing: None,
        link_key_version: state.link_key_version(),
        members,
        revoked_certificates: state
            .revoked_certificates()
            .iter()
            .map(|(fp, r)| RevokedStatus {
                certificate: hex(fp),
                member: r.member.clone(),
                reason: r.reason.clone(),
            })
            .collect(),
        refusals_total: state.refusals_total(),
        refusals: state
            .refusals()
            .map(|r| RefusalStatus {
                signer: r.signer.clone(),
                sequence: r.sequence,
                command: format!("{:?}", r.command),
                reason: format!("{:?}", r.reason),
            })
            .collect(),
    }
}

impl Status {
    /// A member by id.
    pub fn member(&self, id: &str) -> Option<&MemberStatus> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The status as a person reads it.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let consortium = self
            .consortium
            .as_deref()
            .unwrap_or("(no genesis applied yet)");
        let _ = writeln!(
            out,
            "consortium {consortium}: epoch {}, link key v{}",
            self.epoch, self.link_key_version
        );
        let e = &self.election;
        let _ = if e.epoch_blocks == 0 {
            writeln!(
                out,
                "delegates: the {} active members with the highest stake (no election)",
                e.delegates
            )
        } else {
            writeln!(
                out,
                "delegates: {} elected every {} blocks, at most {} epochs in a row",
                e.delegates, e.epoch_blocks, e.max_consecutive
            )
        };
        if let Some(standing) = &self.standing {
            let _ = writeln!(
                out,
                "ledger epoch {}: delegates {:?}",
                standing.ledger_epoch, standing.delegates
            );
            if let Some(c) = &standing.last_closed {
                let _ = writeln!(
                    out,
                    "epoch {} closed: {:?} elected for epoch {}; {}",
                    c.epoch,
                    c.elected,
                    c.epoch + 2,
                    c.changes.join(", ")
                );
            }
            let _ = writeln!(
                out,
                "{:<16} {:>6} {:>10} {:>12} tombstoned",
                "member", "stake", "reputation", "jailed until"
            );
            for m in &standing.members {
                let _ = writeln!(
                    out,
                    "{:<16} {:>6} {:>10} {:>12} {}",
                    m.member,
                    m.stake,
                    m.reputation,
                    m.jailed_until,
                    if m.tombstoned { "yes" } else { "no" }
                );
            }
        }
        let leader = self
            .raft
            .leader
            .map_or_else(|| "unknown".to_owned(), |l| l.to_string());
        let _ = writeln!(
            out,
            "node {} ({}, {}) at {}: {}, leader {leader}, term {}, last log {}, applied {}",
            self.node.node_id,
            self.node.member,
            self.node.standing,
            self.node.address,
            self.raft.state,
            self.raft.term,
            opt(self.raft.last_log_index),
            opt(self.raft.last_applied),
        );
        let _ = writeln!(
            out,
            "voters {:?}, learners {:?}",
            self.raft.voters, self.raft.learners
        );
        let _ = writeln!(
            out,
            "\n{:<16} {:<10} {:<10} {:>5} {:<8} {:<22} {:>6} {:<17} link",
            "member", "kind", "status", "node", "role", "address", "stake", "certificate"
        );
        for m in &self.members {
            let _ = writeln!(
                out,
                "{:<16} {:<10} {:<10} {:>5} {:<8} {:<22} {:>6} {:<17} {}",
                m.id,
                m.kind,
                m.status,
                m.node_id,
                m.role,
                m.address,
                m.stake,
                format!("{}…", &m.certificate[..16.min(m.certificate.len())]),
                m.link_key_version
                    .map_or_else(|| "-".to_owned(), |v| format!("v{v}")),
            );
        }
        let _ = writeln!(
            out,
            "\nrevoked certificates: {}",
            self.revoked_certificates.len()
        );
        for r in &self.revoked_certificates {
            let _ = writeln!(
                out,
                "  {}… {} ({})",
                &r.certificate[..16],
                r.member,
                r.reason
            );
        }
        let _ = writeln!(out, "refused commands: {}", self.refusals_total);
        for r in &self.refusals {
            let _ = writeln!(
                out,
                "  {} #{} {}: {}",
                r.signer, r.sequence, r.command, r.reason
            );
        }
        out
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}
