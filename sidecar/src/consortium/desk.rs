//! The regulator's join desk: the invites the regulator issues, and the join requests they let
//! in, kept in the node's sled database until the regulator admits them.
//!
//! The desk listens with server-authenticated TLS only (applicants hold no member certificate
//! yet), so anyone who reaches it can post. A request is kept only if it carries an invite the
//! regulator issued for its member id (`fhirseal consortium invite ID`): a random token the CLI
//! makes and shows once, of which the node keeps only the SHA-256 (tree `consortium.invites`,
//! keyed by that hash), with the member id and an expiry. Using an invite removes it, in the
//! same sled transaction that keeps the request (tree `consortium.joins`, keyed by member id),
//! so one invite lets in one request.
//!
//! What the desk checks of the request itself is the state machine's rule
//! ([`GovernanceState::check_admission`], [`SignedCommand::join_request`]), called, not copied:
//! a request kept pending is one the regulator could admit now.

use std::fmt;

use fhirseal_consensus::governance::{limits, GovernanceState, SignedCommand};
use fhirseal_consensus::raft::GovernanceView;
use fhirseal_consensus::Timestamp;
use fhirseal_storage::pause::writing;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional as _};

use crate::consortium::api::{JoinAnswer, PendingJoin};
pub use crate::consortium::error::{DeskError, InviteRefusal};
use crate::consortium::files::{hex, kind_name, TrustedPeer};

/// The header a join request's invite token crosses in.
pub const INVITE_HEADER: &str = "x-fhirseal-invite";
/// Most join requests kept pending at once.
const MAX_PENDING_JOINS: usize = 1024;
/// Most invites kept at once (expired ones are dropped first).
const MAX_INVITES: usize = 1024;
/// The longest an invite may stay valid: 30 days.
pub const MAX_INVITE_VALIDITY_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// An invite as the regulator's node keeps it, under the SHA-256 of its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// The member id it lets in.
    pub member: String,
    /// When it stops letting anyone in (milliseconds since the Unix epoch).
    pub expires_at: u64,
}

/// SHA-256 of an invite token: what the node keeps and looks an invite up by.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// Whether `invite` (the one the request's token names, if any) lets in a request for
/// `member` at `now`.
pub fn check_invite(
    invite: Option<&Invite>,
    member: &str,
    now: Timestamp,
) -> Result<(), InviteRefusal> {
    let invite = invite.ok_or(InviteRefusal::Unknown)?;
    if invite.member != member {
        return Err(InviteRefusal::OtherMember);
    }
    if now.0 >= invite.expires_at {
        return Err(InviteRefusal::Expired);
    }
    Ok(())
}

/// The desk's trees.
#[derive(Clone)]
pub struct Desk {
    invites: sled::Tree,
    joins: sled::Tree,
}

impl fmt::Debug for Desk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Desk")
            .field("invites", &self.invites.len())
            .field("joins", &self.joins.len())
            .finish()
    }
}

impl Desk {
    /// The desk kept in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, DeskError> {
        Ok(Self {
            invites: db.open_tree("consortium.invites")?,
            joins: db.open_tree("consortium.joins")?,
        })
    }

    /// Keeps an invite for `invite.member` under `hash` (the SHA-256 of its token), after
    /// dropping the expired ones. The member id must not be a member's yet, and the expiry must
    /// be ahead, within [`MAX_INVITE_VALIDITY_MS`].
    pub fn invite(
        &self,
        state: &GovernanceView,
        hash: [u8; 32],
        invite: &Invite,
        now: Timestamp,
    ) -> Result<(), DeskError> {
        if invite.member.is_empty() || invite.member.len() > limits::MAX_NAME_LEN {
            return Err(DeskError::BadRequest(
                "the member id is empty or longer than 256 bytes".into(),
            ));
        }
        if invite.expires_at <= now.0 || invite.expires_at - now.0 > MAX_INVITE_VALIDITY_MS {
            return Err(DeskError::BadRequest(
                "an invite expires after now and within 30 days".into(),
            ));
        }
        if state.read(|s| s.member(&invite.member).is_some()) {
            return Err(DeskError::AlreadyMember(invite.member.clone()));
        }
        self.drop_expired(now)?;
        if self.invites.len() >= MAX_INVITES {
            return Err(DeskError::Full("invites"));
        }
        let value = serde_json::to_vec(invite).map_err(|e| DeskError::BadRequest(e.to_string()))?;
        {
            let _writing = writing();
            self.invites.insert(hash, value)?;
        }
        self.invites.flush()?;
        Ok(())
    }

    fn drop_expired(&self, now: Timestamp) -> Result<(), DeskError> {
        for item in self.invites.iter() {
            let (hash, value) = item?;
            let expired = serde_json::from_slice::<Invite>(&value).map_or(true, |invite| {
                check_invite(Some(&invite), &invite.member, now).is_err()
            });
            if expired {
                let _writing = writing();
                self.invites.remove(hash)?;
            }
        }
        Ok(())
    }

    /// Checks a join request (`body`, the applicant's signed admission) against `state` and
    /// the invite whose token is `token`, and keeps it; answers what the applicant needs: the
    /// consortium's name and its active members' nodes, to trust until its admission. A request
    /// already pending byte for byte is answered again, and uses no invite.
    pub fn receive(
        &self,
        state: &GovernanceView,
        body: &[u8],
        token: Option<&str>,
        now: Timestamp,
    ) -> Result<JoinAnswer, DeskError> {
        let request = SignedCommand::from_bytes(body)
            .map_err(|e| DeskError::BadRequest(format!("not a signed join request: {e}")))?;
        if !request.is_encodable() {
            return Err(DeskError::BadRequest(
                "a field of the request is empty or over its bound".into(),
            ));
        }
        let (member, possession) = request.join_request().ok_or_else(|| {
            DeskError::BadRequest(
                "a join request is an admission signed by the applicant's own new key".into(),
            )
        })?;
        if !request.validity.contains(now) {
            return Err(DeskError::BadRequest(
                "the request is outside its validity window".into(),
            ));
        }
        let answer = state.read(|s| -> Result<JoinAnswer, DeskError> {
            let consortium = s.consortium().ok_or(DeskError::NoGenesis)?;
            if request.consortium != consortium {
                return Err(DeskError::BadRequest(
                    "the request is for another consortium".into(),
                ));
            }
            s.check_admission(member, possession)
                .map_err(DeskError::Inadmissible)?;
            Ok(JoinAnswer {
                consortium: consortium.to_owned(),
                trust: trusted_peers(s),
            })
        })?;
        if self.joins.get(member.id.as_bytes())?.as_deref() == Some(body) {
            return Ok(answer);
        }
        let hash = token.map(token_hash).ok_or(InviteRefusal::Missing)?;
        if self.joins.len() >= MAX_PENDING_JOINS {
            return Err(DeskError::Full("join requests"));
        }
        let writing = writing();
        let kept = (&self.invites, &self.joins).transaction(|(invites, joins)| {
            let invite = invites
                .get(hash)?
                .and_then(|value| serde_json::from_slice::<Invite>(&value).ok());
            check_invite(invite.as_ref(), &member.id, now)
                .map_err(|e| ConflictableTransactionError::Abort(DeskError::Invite(e)))?;
            if joins.get(member.id.as_bytes())?.is_some() {
                return Err(ConflictableTransactionError::Abort(DeskError::Pending));
            }
            invites.remove(&hash)?;
            joins.insert(member.id.as_bytes(), body)?;
            Ok(())
        });
        drop(writing);
        match kept {
            Ok(()) => {}
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        }
        self.joins.flush()?;
        tracing::info!(member = %member.id, node_id = member.node_id, "join request pending");
        Ok(answer)
    }

    /// The pending join requests, with the certificate each asks for.
    pub fn pending(&self) -> Result<Vec<PendingJoin>, DeskError> {
        let mut pending = Vec::new();
        for value in self.joins.iter().values() {
            let Ok(request) = SignedCommand::from_bytes(&value?) else {
                continue;
            };
            if let Some((member, _)) = request.join_request() {
                pending.push(PendingJoin {
                    id: member.id.clone(),
                    name: member.name.clone(),
                    kind: kind_name(member.kind).to_owned(),
                    node_id: member.node_id,
                    address: member.address.clone(),
                    certificate: hex(&member.keys.tls_certificate),
                });
            }
        }
        Ok(pending)
    }

    /// The pending request of `member`, as it was posted.
    pub fn request(&self, member: &str) -> Result<Option<Vec<u8>>, DeskError> {
        Ok(self.joins.get(member.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Forgets the requests of members the state has admitted.
    pub fn forget_admitted(&self, state: &GovernanceView) -> Result<(), DeskError> {
        for key in self.joins.iter().keys() {
            let key = key?;
            let id = String::from_utf8_lossy(&key);
            if state.read(|s| s.member(&id).is_some()) {
                let _writing = writing();
                self.joins.remove(key)?;
            }
        }
        Ok(())
    }
}

/// The active members' nodes, for an applicant to trust until its admission reaches it.
fn trusted_peers(state: &GovernanceState) -> Vec<TrustedPeer> {
    let voters = state.voters();
    state
        .members()
        .filter(|m| m.is_active())
        .map(|m| TrustedPeer {
            member: m.id().to_owned(),
            node_id: m.profile.node_id,
            certificate: hex(&m.keys().tls_certificate),
            voter: voters.contains_key(&m.profile.node_id),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirseal_consensus::governance::Refusal;

    fn invite(member: &str, expires_at: u64) -> Invite {
        Invite {
            member: member.to_owned(),
            expires_at,
        }
    }

    #[test]
    fn an_invite_lets_in_its_member_until_it_expires() {
        let h2 = invite("h2", 1_000);
        assert_eq!(check_invite(Some(&h2), "h2", Timestamp(999)), Ok(()));
        assert_eq!(
            check_invite(Some(&h2), "h2", Timestamp(1_000)),
            Err(InviteRefusal::Expired)
        );
        assert_eq!(
            check_invite(Some(&h2), "h3", Timestamp(0)),
            Err(InviteRefusal::OtherMember)
        );
        assert_eq!(
            check_invite(None, "h2", Timestamp(0)),
            Err(InviteRefusal::Unknown)
        );
    }

    #[test]
    fn tokens_are_kept_hashed() {
        let token = "ab".repeat(32);
        let hash = token_hash(&token);
        assert_ne!(hex(&hash), token);
        assert_eq!(token_hash(&format!(" {token}\n")), hash);
        assert_ne!(token_hash(&"ac".repeat(32)), hash);
    }

    #[test]
    fn refusals_are_answered_with_their_status() {
        for (error, status) in [
            (DeskError::Invite(InviteRefusal::Missing), 403),
            (DeskError::Invite(InviteRefusal::Unknown), 403),
            (DeskError::Inadmissible(Refusal::MemberExists), 409),
            (DeskError::Inadmissible(Refusal::BadKeyProof), 400),
            (DeskError::Pending, 409),
            (DeskError::NoGenesis, 503),
        ] {
            assert_eq!(error.status().as_u16(), status, "{error}");
        }
    }
}
