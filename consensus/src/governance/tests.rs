//! The authorization rules, one by one; the fixtures (parties, signing, times) serve the Raft
//! layer's unit tests too.

use ed25519_dalek::{Signature, SigningKey};

use super::*;
use crate::codec::{DecodeError, Wire as _};
use crate::keys::{DelegateSet, PublicKey};
use crate::tx::Timestamp;

pub(crate) const CONSORTIUM: &str = "test-consortium";
pub(crate) const REGULATOR: &str = "regulator";

/// A member's secret signing key and its admission, made from a one-byte seed.
pub(crate) struct Party {
    pub(crate) key: SigningKey,
    pub(crate) admission: Admission,
}

fn keys_from(seed: u8, key: &SigningKey) -> MemberKeys {
    MemberKeys {
        tls_certificate: [seed; 32],
        signing_key: PublicKey::of(key),
        wrapping_key: vec![seed; 300],
        vote_key: [seed.wrapping_add(100); 32],
        beacon_key: [seed.wrapping_add(150); 32],
    }
}

pub(crate) fn party(id: &str, seed: u8, kind: MemberKind, role: RaftRole) -> Party {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let admission = Admission {
        id: id.to_owned(),
        name: format!("{id} (name)"),
        kind,
        node_id: u64::from(seed),
        address: format!("10.0.0.{seed}:7000"),
        raft_role: role,
        keys: keys_from(seed, &key),
        stake: 100,
        reputation: 50,
    };
    Party { key, admission }
}

pub(crate) fn regulator() -> Party {
    party(REGULATOR, 1, MemberKind::Regulator, RaftRole::Voter)
}

pub(crate) fn hospital(id: &str, seed: u8) -> Party {
    party(id, seed, MemberKind::Hospital, RaftRole::Learner)
}

pub(crate) fn at(ms: u64) -> Timestamp {
    Timestamp(ms)
}

/// A window that holds every time these tests apply commands at.
pub(crate) fn window() -> Validity {
    Validity {
        not_before: at(0),
        not_after: at(limits::MAX_VALIDITY_MS),
    }
}

pub(crate) fn sign(
    signer: &str,
    sequence: u64,
    command: Command,
    key: &SigningKey,
) -> SignedCommand {
    SignedCommand::sign(CONSORTIUM, signer, sequence, window(), command, key)
}

fn genesis(state: &mut GovernanceState, regulator: &Party) {
    let command = sign(
        REGULATOR,
        1,
        Command::Genesis {
            regulator: regulator.admission.clone(),
            election: ElectionParams::NONE,
        },
        &regulator.key,
    );
    assert_eq!(state.apply(&command, at(1)), Outcome::Accepted);
}

pub(crate) fn admit_command(new: &Party) -> Command {
    Command::Admit {
        member: new.admission.clone(),
        possession: new
            .admission
            .keys
            .prove_possession(CONSORTIUM, &new.admission.id, &new.key),
    }
}

/// A consortium with its regulator and hospital "h1" admitted (regulator's sequence 2 used).
fn founded() -> (GovernanceState, Party, Party) {
    let mut state = GovernanceState::new();
    let regulator = regulator();
    genesis(&mut state, &regulator);
    let h1 = hospital("h1", 11);
    let admit = sign(REGULATOR, 2, admit_command(&h1), &regulator.key);
    assert_eq!(state.apply(&admit, at(2)), Outcome::Accepted);
    (state, regulator, h1)
}

fn last_refusal(state: &GovernanceState) -> &RefusalRecord {
    state.refusals().last().expect("a refusal was recorded")
}

#[test]
fn genesis_founds_the_consortium_once() {
    let mut state = GovernanceState::new();
    assert_eq!(state.consortium(), None);
    let regulator = regulator();
    genesis(&mut state, &regulator);
    assert_eq!(state.consortium(), Some(CONSORTIUM));
    assert_eq!(
        state.regulator_key(),
        Some(regulator.admission.keys.signing_key)
    );
    assert!(state.is_active(REGULATOR));
    assert_eq!(state.current_epoch(), 0);

    let again = sign(
        REGULATOR,
        5,
        Command::Genesis {
            regulator: regulator.admission.clone(),
            election: ElectionParams::NONE,
        },
        &regulator.key,
    );
    assert_eq!(
        state.apply(&again, at(3)),
        Outcome::Refused(Refusal::AlreadyGenesis)
    );
    assert_eq!(state.refusals_total(), 1);
}

#[test]
fn genesis_must_be_a_voting_regulator_signing_for_itself() {
    let regulator = regulator();
    let impostor = SigningKey::from_bytes(&[99; 32]);
    let mut state = GovernanceState::new();
    let forged = sign(
        REGULATOR,
        1,
        Command::Genesis {
            regulator: regulator.admission.clone(),
            election: ElectionParams::NONE,
        },
        &impostor,
    );
    assert_eq!(
        state.apply(&forged, at(1)),
        Outcome::Refused(Refusal::BadSignature)
    );
    let h = hospital("h", 5);
    let not_regulator = sign(
        "h",
        1,
        Command::Genesis {
            regulator: h.admission.clone(),
            election: ElectionParams::NONE,
        },
        &h.key,
    );
    assert_eq!(
        state.apply(&not_regulator, at(1)),
        Outcome::Refused(Refusal::BadGenesis)
    );
    assert_eq!(state.consortium(), None);
    assert_eq!(state.refusals_total(), 2);
}

#[test]
fn nothing_but_genesis_before_genesis() {
    let mut state = GovernanceState::new();
    let regulator = regulator();
    let admit = sign(
        REGULATOR,
        2,
        admit_command(&hospital("h1", 11)),
        &regulator.key,
    );
    assert_eq!(
        state.apply(&admit, at(1)),
        Outcome::Refused(Refusal::NoGenesis)
    );
}

#[test]
fn an_admission_signed_by_the_regulator_is_accepted() {
    let (state, _, h1) = founded();
    let member = state.member("h1").expect("admitted");
    assert_eq!(member.status, MemberStatus::Active);
    assert_eq!(member.profile, h1.admission);
    assert_eq!(member.admitted_at, at(2));
    assert!(state.cert_allowed(&[11; 32]));
    assert_eq!(state.refusals_total(), 0);
}

#[test]
fn an_admission_signed_by_another_member_is_refused_and_recorded() {
    let (mut state, _, h1) = founded();
    let h2 = hospital("h2", 12);
    let by_member = sign("h1", 1, admit_command(&h2), &h1.key);
    assert_eq!(
        state.apply(&by_member, at(3)),
        Outcome::Refused(Refusal::NotRegulator)
    );
    assert!(state.member("h2").is_none());
    let record = last_refusal(&state);
    assert_eq!(record.signer, "h1");
    assert_eq!(record.command, CommandKind::Admit);
    assert_eq!(record.reason, Refusal::NotRegulator);
    assert_eq!(record.at, at(3));
}

#[test]
fn an_admission_claiming_the_regulator_without_its_key_is_refused_and_recorded() {
    let (mut state, _, h1) = founded();
    let h2 = hospital("h2", 12);
    // Signed by h1's key but naming the regulator as signer.
    let forged = sign(REGULATOR, 3, admit_command(&h2), &h1.key);
    assert_eq!(
        state.apply(&forged, at(3)),
        Outcome::Refused(Refusal::BadSignature)
    );
    // Not signed at all.
    let mut unsigned = sign(REGULATOR, 4, admit_command(&h2), &h1.key);
    unsigned.signature = Signature::from_bytes(&[0; 64]);
    assert_eq!(
        state.apply(&unsigned, at(4)),
        Outcome::Refused(Refusal::BadSignature)
    );
    // From someone who is not a member.
    let stranger = SigningKey::from_bytes(&[77; 32]);
    let outsider = sign("stranger", 1, admit_command(&h2), &stranger);
    assert_eq!(
        state.apply(&outsider, at(5)),
        Outcome::Refused(Refusal::UnknownSigner)
    );
    assert!(state.member("h2").is_none());
    assert_eq!(state.refusals_total(), 3);
    let reasons: Vec<_> = state.refusals().map(|r| r.reason).collect();
    assert_eq!(
        reasons,
        [
            Refusal::BadSignature,
            Refusal::BadSignature,
            Refusal::UnknownSigner
        ]
    );
    // A forged command does not use up the regulator's sequence numbers.
    let genuine = sign(REGULATOR, 3, admit_command(&h2), &regulator().key);
    assert_eq!(state.apply(&genuine, at(6)), Outcome::Accepted);
}

#[test]
fn a_replayed_command_is_refused() {
    let (mut state, regulator, _) = founded();
    let stake = sign(
        REGULATOR,
        3,
        Command::SetStake {
            member: "h1".into(),
            stake: 500,
        },
        &regulator.key,
    );
    assert_eq!(state.apply(&stake, at(3)), Outcome::Accepted);
    assert_eq!(
        state.apply(&stake, at(4)),
        Outcome::Refused(Refusal::Replayed)
    );
    let older = sign(
        REGULATOR,
        2,
        Command::SetStake {
            member: "h1".into(),
            stake: 1,
        },
        &regulator.key,
    );
    assert_eq!(
        state.apply(&older, at(5)),
        Outcome::Refused(Refusal::Replayed)
    );
    assert_eq!(state.member("h1").unwrap().profile.stake, 500);
    assert_eq!(last_refusal(&state).reason, Refusal::Replayed);
}

#[test]
fn a_refused_authentic_command_cannot_be_replayed_once_it_would_pass() {
    let (mut state, regulator, _) = founded();
    let h2 = hospital("h2", 12);
    let mut clash = h2.admission.clone();
    clash.node_id = 11; // h1's
    let possession = clash.keys.prove_possession(CONSORTIUM, "h2", &h2.key);
    let refused = sign(
        REGULATOR,
        3,
        Command::Admit {
            member: clash,
            possession,
        },
        &regulator.key,
    );
    assert_eq!(
        state.apply(&refused, at(3)),
        Outcome::Refused(Refusal::NodeIdTaken)
    );
    // The same signed bytes, played again, are a replay whatever the state has become.
    assert_eq!(
        state.apply(&refused, at(4)),
        Outcome::Refused(Refusal::Replayed)
    );
}

#[test]
fn the_wrong_consortium_is_refused() {
    let (mut state, regulator, _) = founded();
    let other = SignedCommand::sign(
        "other-consortium",
        REGULATOR,
        3,
        window(),
        Command::BeginEpoch {
            epoch: 1,
            delegates: 4,
        },
        &regulator.key,
    );
    assert_eq!(
        state.apply(&other, at(3)),
        Outcome::Refused(Refusal::WrongConsortium)
    );
    assert_eq!(state.current_epoch(), 1);
}

#[test]
fn suspension_and_reinstatement_are_the_regulators() {
    let (mut state, regulator, h1) = founded();
    let suspend = |seq| {
        sign(
            REGULATOR,
            seq,
            Command::Suspend {
                member: "h1".into(),
                reason: "audit".into(),
            },
            &regulator.key,
        )
    };
    let by_self = sign(
        "h1",
        1,
        Command::Reinstate {
            member: "h1".into(),
        },
        &h1.key,
    );
    assert_eq!(state.apply(&suspend(3), at(3)), Outcome::Accepted);
    assert!(!state.is_active("h1"));
    assert!(!state.cert_allowed(&[11; 32]));
    assert_eq!(
        state.apply(&suspend(4), at(4)),
        Outcome::Refused(Refusal::NotActive)
    );
    assert_eq!(
        state.apply(&by_self, at(5)),
        Outcome::Refused(Refusal::NotRegulator)
    );
    let reinstate = sign(
        REGULATOR,
        5,
        Command::Reinstate {
            member: "h1".into(),
        },
        &regulator.key,
    );
    assert_eq!(state.apply(&reinstate, at(6)), Outcome::Accepted);
    assert!(state.is_active("h1"));
    assert_eq!(state.member("h1").unwrap().status_since, at(6));
    let suspend_regulator = sign(
        REGULATOR,
        6,
        Command::Suspend {
            member: REGULATOR.into(),
            reason: "".into(),
        },
        &regulator.key,
    );
    assert_eq!(
        state.apply(&suspend_regulator, at(7)),
        Outcome::Refused(Refusal::TargetIsRegulator)
    );
}

#[test]
fn revocation_is_final_and_revokes_the_certificate() {
    let (mut state, regulator, h1) = founded();
    let revoke = sign(
        REGULATOR,
        3,
        Command::Revoke {
            member: "h1".into(),
            reason: "breach".into(),
        },
        &regulator.key,
    );
    assert_eq!(state.apply(&revoke, at(3)), Outcome::Accepted);
    assert_eq!(state.member("h1").unwrap().status, MemberStatus::Revoked);
    assert!(!state.cert_allowed(&[11; 32]));
    let entry = &state.revoked_certificates()[&[11; 32]];
    assert_eq!(
        (entry.member.as_str(), entry.reason.as_str()),
        ("h1", "breach")
    );

    // It cannot be reinstated…
    let reinstate = sign(
        REGULATOR,
        4,
        Command::Reinstate {
            member: "h1".into(),
        },
        &regulator.key,
    );
    assert_eq!(
        state.apply(&reinstate, at(4)),
        Outcome::Refused(Refusal::AlreadyRevoked)
    );
    // …nor rotate its keys…
    let fresh = SigningKey::from_bytes(&[21; 32]);
    let keys = keys_from(21, &fresh);
    let rotate = sign(
        "h1",
        1,
        Command::RotateKeys {
            member: "h1".into(),
            possession: keys.prove_possession(CONSORTIUM, "h1", &fresh),
            keys,
        },
        &h1.key,
    );
    assert_eq!(
        state.apply(&rotate, at(5)),
        Outcome::Refused(Refusal::SignerRevoked)
    );
    // …nor come back under its id, nor reuse its certificate under another.
    let again = sign(REGULATOR, 5, admit_command(&h1), &regulator.key);
    assert_eq!(
        state.apply(&again, at(6)),
        Outcome::Refused(Refusal::MemberExists)
    );
    let mut copycat = hospital("h9", 19);
    copycat.admission.keys.tls_certificate = [11; 32];
    let copy = sign(REGULATOR, 6, admit_command(&copycat), &regulator.key);
    assert_eq!(
        state.apply(&copy, at(7)),
        Outcome::Refused(Refusal::CertificateRevoked)
    );
}

#[test]
fn keys_are_rotated_by_the_member_itself_only() {
    let (mut state, regulator, h1) = founded();
    let fresh = SigningKey::from_bytes(&[21; 32]);
    let keys = keys_from(21, &fresh);
    let command = Command::RotateKeys {
        member: "h1".into(),
        keys: keys.clone(),
        possession: keys.prove_possession(CONSORTIUM, "h1", &fresh),
    };
    // The regulator cannot rotate another member's keys.
    let by_regulator = sign(REGULATOR, 3, command.clone(), &regulator.key);
    assert_eq!(
        state.apply(&by_regulator, at(3)),
        Outcome::Refused(Refusal::NotSelf)
    );
    // Signing with the new key instead of the current one is refused.
    let with_new_key = sign("h1", 1, command.clone(), &fresh);
    assert_eq!(
        state.apply(&with_new_key, at(4)),
        Outcome::Refused(Refusal::BadSignature)
    );
    // A proof of possession by another key is refused.
    let mut bad_proof = command.clone();
    if let Command::RotateKeys { possession, .. } = &mut bad_proof {
        *possession = keys.prove_possession(CONSORTIUM, "h1", &h1.key);
    }
    let bad = sign("h1", 1, bad_proof, &h1.key);
    assert_eq!(
        state.apply(&bad, at(5)),
        Outcome::Refused(Refusal::BadKeyProof)
    );

    let by_self = sign("h1", 2, command, &h1.key);
    assert_eq!(state.apply(&by_self, at(6)), Outcome::Accepted);
    assert_eq!(state.member("h1").unwrap().keys(), &keys);
    assert!(state.cert_allowed(&[21; 32]));
    assert!(!state.cert_allowed(&[11; 32]));
    assert!(state.revoked_certificates().contains_key(&[11; 32]));

    // From now on only the new key signs for h1.
    let stale = sign(
        "h1",
        3,
        Command::BeginEpoch {
            epoch: 1,
            delegates: 4,
        },
        &h1.key,
    );
    assert_eq!(
        state.apply(&stale, at(7)),
        Outcome::Refused(Refusal::BadSignature)
    );
}

#[test]
fn keys_cannot_be_taken_from_another_member() {
    let (mut state, regulator, h1) = founded();
    let mut thief = hospital("h2", 12);
    thief.admission.keys.vote_key = h1.admission.keys.vote_key;
    let admit = sign(REGULATOR, 3, admit_command(&thief), &regulator.key);
    assert_eq!(
        state.apply(&admit, at(3)),
        Outcome::Refused(Refusal::VoteKeyInUse)
    );
    // Declaring another member's signing key fails twice over: it is in use, and the
    // admitted party cannot prove possession of it.
    let mut thief = hospital("h2", 12);
    thief.admission.keys.signing_key = h1.admission.keys.signing_key;
    let admit = sign(REGULATOR, 4, admit_command(&thief), &regulator.key);
    assert_eq!(
        state.apply(&admit, at(4)),
        Outcome::Refused(Refusal::SigningKeyInUse)
    );
    let second_regulator = party("r2", 13, MemberKind::Regulator, RaftRole::Voter);
    let admit = sign(
        REGULATOR,
        5,
        admit_command(&second_regulator),
        &regulator.key,
    );
    assert_eq!(
        state.apply(&admit, at(5)),
        Outcome::Refused(Refusal::SecondRegulator)
    );
    // A proof of possession made for another member id does not transfer.
    let h3 = hospital("h3", 14);
    let admit = sign(
        REGULATOR,
        6,
        Command::Admit {
            member: h3.admission.clone(),
            possession: h3
                .admission
                .keys
                .prove_possession(CONSORTIUM, "h4", &h3.key),
        },
        &regulator.key,
    );
    assert_eq!(
        state.apply(&admit, at(6)),
        Outcome::Refused(Refusal::BadKeyProof)
    );
}

#[test]
fn stake_is_set_by_the_regulator_only() {
    let (mut state, regulator, h1) = founded();
    let by_member = sign(
        "h1",
        1,
        Command::SetStake {
            member: "h1".into(),
            stake: 1_000_000,
        },
        &h1.key,
    );
    assert_eq!(
        state.apply(&by_member, at(3)),
        Outcome::Refused(Refusal::NotRegulator)
    );
    let by_regulator = sign(
        REGULATOR,
        3,
        Command::SetStake {
            member: "h1".into(),
            stake: 7,
        },
        &regulator.key,
    );
    assert_eq!(state.apply(&by_regulator, at(4)), Outcome::Accepted);
    assert_eq!(state.member("h1").unwrap().profile.stake, 7);
    let unknown = sign(
        REGULATOR,
        4,
        Command::SetStake {
            member: "nobody".into(),
            stake: 7,
        },
        &regulator.key,
    );
    assert_eq!(
        state.apply(&unknown, at(5)),
        Outcome::Refused(Refusal::UnknownMember)
    );
}

#[test]
fn link_keys_are_wrapped_for_members_by_the_regulator() {
    let (mut state, regulator, h1) = founded();
    let wrap = |seq, version, wrapped: Vec<(MemberId, Vec<u8>)>| {
        sign(
            REGULATOR,
            seq,
            Command::WrapLinkKey { version, wrapped },
            &regulator.key,
        )
    };
    let command = wrap(
        3,
        1,
        vec![
            ("h1".into(), vec![0xaa; 256]),
            (REGULATOR.into(), vec![0xbb; 256]),
        ],
    );
    assert_eq!(state.apply(&command, at(3)), Outcome::Accepted);
    assert_eq!(state.link_key_version(), 1);
    let h1_key = state.wrapped_link_key("h1").unwrap();
    assert_eq!(h1_key.ciphertext, vec![0xaa; 256]);
    assert_eq!(h1_key.wrapped_for, h1.admission.keys.wrapping_key_id());

    assert_eq!(
        state.apply(&wrap(4, 0, vec![("h1".into(), vec![1])]), at(4)),
        Outcome::Refused(Refusal::StaleLinkKey)
    );
    assert_eq!(
        state.apply(
            &wrap(5, 2, vec![("h1".into(), vec![1]), ("h1".into(), vec![2])]),
            at(5)
        ),
        Outcome::Refused(Refusal::Malformed)
    );
    // Nothing of a refused command is applied, even the entries before the bad one.
    assert_eq!(
        state.apply(
            &wrap(
                6,
                2,
                vec![("h1".into(), vec![1]), ("ghost".into(), vec![2])]
            ),
            at(6)
        ),
        Outcome::Refused(Refusal::UnknownMember)
    );
    assert_eq!(state.wrapped_link_key("h1").unwrap().version, 1);
    let by_member = sign(
        "h1",
        1,
        Command::WrapLinkKey {
            version: 9,
            wrapped: vec![("h1".into(), vec![1])],
        },
        &h1.key,
    );
    assert_eq!(
        state.apply(&by_member, at(7)),
        Outcome::Refused(Refusal::NotRegulator)
    );

    // Revocation withdraws the member's wrapped key.
    let revoke = sign(
        REGULATOR,
        7,
        Command::Revoke {
            member: "h1".into(),
            reason: "left".into(),
        },
        &regulator.key,
    );
    assert_eq!(state.apply(&revoke, at(8)), Outcome::Accepted);
    assert!(state.wrapped_link_key("h1").is_none());
}

#[test]
fn epochs_advance_one_at_a_time() {
    let (mut state, regulator, _) = founded();
    let begin = |seq, epoch| {
        sign(
            REGULATOR,
            seq,
            Command::BeginEpoch {
                epoch,
                delegates: 4,
            },
            &regulator.key,
        )
    };
    // h1's admission began epoch 1 (see below).
    assert_eq!(state.current_epoch(), 1);
    assert_eq!(
        state.apply(&begin(3, 3), at(3)),
        Outcome::Refused(Refusal::StaleEpoch)
    );
    assert_eq!(state.apply(&begin(4, 2), at(10)), Outcome::Accepted);
    assert_eq!(state.current_epoch(), 2);
    assert_eq!(state.epoch(2).unwrap().started_at, at(10));
    assert_eq!(
        state.apply(&begin(5, 2), at(11)),
        Outcome::Refused(Refusal::StaleEpoch)
    );
}

#[test]
fn epochs_follow_the_k_active_members_with_the_highest_stake() {
    let mut state = GovernanceState::new();
    let regulator = regulator();
    genesis(&mut state, &regulator);
    let names = |d: &[(String, PublicKey)]| d.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>();
    // Genesis: the regulator alone, K = 4.
    assert_eq!(state.delegates_k(), 4);
    assert_eq!(
        state.epoch(0).unwrap().delegates,
        vec![(REGULATOR.to_owned(), PublicKey::of(&regulator.key))]
    );
    // Each admission changes who the delegates would be: the state begins an epoch by itself.
    let (h1, h2) = (hospital("h1", 11), hospital("h2", 12));
    let admit = sign(REGULATOR, 2, admit_command(&h1), &regulator.key);
    assert_eq!(state.apply(&admit, at(2)), Outcome::Accepted);
    assert_eq!(state.current_epoch(), 1);
    assert_eq!(state.epoch(1).unwrap().started_at, at(2));
    assert_eq!(names(state.current_delegates()), ["h1", REGULATOR]);
    let admit = sign(REGULATOR, 3, admit_command(&h2), &regulator.key);
    assert_eq!(state.apply(&admit, at(3)), Outcome::Accepted);
    assert_eq!(state.current_epoch(), 2);
    assert_eq!(names(state.current_delegates()), ["h1", "h2", REGULATOR]);
    // Equal stakes go by member id; a higher stake first.
    let stake = |seq, member: &str, stake| {
        sign(
            REGULATOR,
            seq,
            Command::SetStake {
                member: member.into(),
                stake,
            },
            &regulator.key,
        )
    };
    assert_eq!(state.apply(&stake(4, "h2", 500), at(4)), Outcome::Accepted);
    assert_eq!(state.current_epoch(), 3);
    assert_eq!(names(state.current_delegates()), ["h2", "h1", REGULATOR]);
    // A stake that changes nobody's place still changes a seat: an epoch with the same
    // delegates begins (the election weighs the stakes of the seats).
    assert_eq!(state.apply(&stake(5, "h2", 600), at(5)), Outcome::Accepted);
    assert_eq!(state.current_epoch(), 4);
    assert_eq!(names(state.current_delegates()), ["h2", "h1", REGULATOR]);
    assert_eq!(state.epoch(4).unwrap().seat("h2").unwrap().stake, 600);
    assert_eq!(state.epoch(3).unwrap().seat("h2").unwrap().stake, 500);
    // The regulator sets K = 2 with an epoch of its own.
    let begin = sign(
        REGULATOR,
        6,
        Command::BeginEpoch {
            epoch: 5,
            delegates: 2,
        },
        &regulator.key,
    );
    assert_eq!(state.apply(&begin, at(6)), Outcome::Accepted);
    assert_eq!(state.delegates_k(), 2);
    let epoch = state.epoch(5).unwrap().clone();
    assert_eq!(names(&epoch.delegates), ["h2", "h1"]);
    assert_eq!(epoch.delegates[1].1, PublicKey::of(&h1.key));
    assert_eq!(epoch.delegate_set().unwrap().len(), 2);
    // A suspension begins the next, without the suspended member; the old ones are kept.
    let suspend = sign(
        REGULATOR,
        7,
        Command::Suspend {
            member: "h2".into(),
            reason: "audit".into(),
        },
        &regulator.key,
    );
    assert_eq!(state.apply(&suspend, at(7)), Outcome::Accepted);
    assert_eq!(names(&state.epoch(5).unwrap().delegates), ["h2", "h1"]);
    assert_eq!(state.current_epoch(), 6);
    assert_eq!(names(state.current_delegates()), ["h1", REGULATOR]);
    // A refused command begins nothing; no delegates at all is malformed.
    let none = sign(
        REGULATOR,
        8,
        Command::BeginEpoch {
            epoch: 7,
            delegates: 0,
        },
        &regulator.key,
    );
    assert_eq!(
        state.apply(&none, at(8)),
        Outcome::Refused(Refusal::Malformed)
    );
    assert_eq!(state.current_epoch(), 6);
    // The epochs survive the state's encoding.
    let decoded = GovernanceState::from_bytes(&state.to_bytes()).unwrap();
    assert_eq!(decoded, state);
}

#[test]
fn voters_and_learners_follow_roles_and_status() {
    let (mut state, regulator, _) = founded();
    let h2 = party("h2", 12, MemberKind::Hospital, RaftRole::Voter);
    let admit = sign(REGULATOR, 3, admit_command(&h2), &regulator.key);
    assert_eq!(state.apply(&admit, at(3)), Outcome::Accepted);
    assert_eq!(state.voters().keys().copied().collect::<Vec<_>>(), [1, 12]);
    assert_eq!(state.voters()[&12], "10.0.0.12:7000");
    assert_eq!(state.learners().keys().copied().collect::<Vec<_>>(), [11]);
    let suspend = sign(
        REGULATOR,
        4,
        Command::Suspend {
            member: "h2".into(),
            reason: "".into(),
        },
        &regulator.key,
    );
    assert_eq!(state.apply(&suspend, at(4)), Outcome::Accepted);
    assert_eq!(state.voters().keys().copied().collect::<Vec<_>>(), [1]);

    let delegates = DelegateSet::new(vec![regulator.admission.keys.signing_key]).unwrap();
    let roster = state.roster(delegates);
    assert!(roster.institution_key("h1").is_some());
    assert!(roster.institution_key("h2").is_none());
}

#[test]
fn the_refusal_log_is_bounded() {
    let (mut state, _, h1) = founded();
    let total = limits::MAX_REFUSALS_KEPT as u64 + 10;
    for seq in 1..=total {
        let command = sign(
            "h1",
            seq,
            Command::BeginEpoch {
                epoch: 1,
                delegates: 4,
            },
            &h1.key,
        );
        assert_eq!(
            state.apply(&command, at(seq)),
            Outcome::Refused(Refusal::NotRegulator)
        );
    }
    assert_eq!(state.refusals_total(), total);
    assert_eq!(state.refusals().count(), limits::MAX_REFUSALS_KEPT);
    assert_eq!(state.refusals().next().unwrap().sequence, 11);
}

#[test]
fn a_malformed_command_is_refused_and_recorded_without_its_oversized_signer() {
    let (mut state, regulator, _) = founded();
    let long = "x".repeat(limits::MAX_NAME_LEN + 1);
    let command = sign(
        &long,
        3,
        Command::Reinstate {
            member: "h1".into(),
        },
        &regulator.key,
    );
    assert!(!command.is_encodable());
    assert_eq!(
        state.apply(&command, at(3)),
        Outcome::Refused(Refusal::Malformed)
    );
    assert_eq!(last_refusal(&state).signer, "");
    // The state, refusal included, still encodes and decodes.
    assert_eq!(
        GovernanceState::from_bytes(&state.to_bytes()).unwrap(),
        state
    );
}

#[test]
fn commands_round_trip_through_their_encoding() {
    let regulator = regulator();
    let h1 = hospital("h1", 11);
    let commands = [
        Command::Genesis {
            regulator: regulator.admission.clone(),
            election: ElectionParams::NONE,
        },
        admit_command(&h1),
        Command::Suspend {
            member: "h1".into(),
            reason: "why".into(),
        },
        Command::Reinstate {
            member: "h1".into(),
        },
        Command::Revoke {
            member: "h1".into(),
            reason: "".into(),
        },
        Command::SetStake {
            member: "h1".into(),
            stake: u64::MAX,
        },
        Command::RotateKeys {
            member: "h1".into(),
            keys: h1.admission.keys.clone(),
            possession: Signature::from_bytes(&[3; 64]),
        },
        Command::WrapLinkKey {
            version: 4,
            wrapped: vec![("h1".into(), vec![1, 2, 3])],
        },
        Command::BeginEpoch {
            epoch: 9,
            delegates: 4,
        },
    ];
    for (seq, command) in commands.into_iter().enumerate() {
        let signed = sign(REGULATOR, seq as u64, command, &regulator.key);
        assert!(signed.is_encodable(), "{signed:?}");
        let bytes = signed.to_bytes();
        assert_eq!(SignedCommand::from_bytes(&bytes).unwrap(), signed);
        assert!(SignedCommand::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    }
}

#[test]
fn the_state_round_trips_and_refuses_other_encodings() {
    let (mut state, regulator, _) = founded();
    let h2 = hospital("h2", 12);
    let admit = sign(REGULATOR, 3, admit_command(&h2), &regulator.key);
    assert_eq!(state.apply(&admit, at(3)), Outcome::Accepted);
    let revoke = sign(
        REGULATOR,
        4,
        Command::Revoke {
            member: "h2".into(),
            reason: "r".into(),
        },
        &regulator.key,
    );
    assert_eq!(state.apply(&revoke, at(4)), Outcome::Accepted);
    let wrap = sign(
        REGULATOR,
        5,
        Command::WrapLinkKey {
            version: 1,
            wrapped: vec![("h1".into(), vec![7; 256])],
        },
        &regulator.key,
    );
    assert_eq!(state.apply(&wrap, at(5)), Outcome::Accepted);
    let refused = sign(
        REGULATOR,
        5,
        Command::BeginEpoch {
            epoch: 1,
            delegates: 4,
        },
        &regulator.key,
    );
    assert_eq!(
        state.apply(&refused, at(6)),
        Outcome::Refused(Refusal::Replayed)
    );

    let bytes = state.to_bytes();
    let decoded = GovernanceState::from_bytes(&bytes).unwrap();
    assert_eq!(decoded, state);
    assert_eq!(decoded.to_bytes(), bytes);

    // Members written out of order are another encoding of the same state: refused.
    let mut w = crate::codec::Writer::default();
    w.u8(crate::codec::FORMAT_VERSION);
    w.str(CONSORTIUM);
    w.u8(0);
    w.len(2);
    // "regulator" sorts after "h1".
    state.member(REGULATOR).unwrap().write(&mut w);
    state.member("h1").unwrap().write(&mut w);
    assert_eq!(
        GovernanceState::from_bytes(w.as_slice()),
        Err(DecodeError::NotCanonical("members"))
    );
}

#[test]
fn a_command_is_applied_only_inside_its_validity_window() {
    let (mut state, regulator, _) = founded();
    let stake = |sequence, not_before, not_after| {
        SignedCommand::sign(
            CONSORTIUM,
            REGULATOR,
            sequence,
            Validity {
                not_before: at(not_before),
                not_after: at(not_after),
            },
            Command::SetStake {
                member: "h1".into(),
                stake: sequence,
            },
            &regulator.key,
        )
    };
    let early = stake(3, 1_000, 2_000);
    assert_eq!(
        state.apply(&early, at(999)),
        Outcome::Refused(Refusal::NotYetValid)
    );
    // Refused once, refused for good: its sequence number is used up.
    assert_eq!(
        state.apply(&early, at(1_500)),
        Outcome::Refused(Refusal::Replayed)
    );
    let late = stake(4, 1_000, 2_000);
    assert_eq!(
        state.apply(&late, at(2_001)),
        Outcome::Refused(Refusal::Expired)
    );
    let refusal = last_refusal(&state);
    assert_eq!(
        (refusal.sequence, refusal.reason, refusal.at),
        (4, Refusal::Expired, at(2_001))
    );
    assert_eq!(state.member("h1").unwrap().profile.stake, 100);
    // Both ends are inside.
    assert_eq!(
        state.apply(&stake(5, 1_000, 2_000), at(1_000)),
        Outcome::Accepted
    );
    assert_eq!(
        state.apply(&stake(6, 1_000, 2_000), at(2_000)),
        Outcome::Accepted
    );
    assert_eq!(state.member("h1").unwrap().profile.stake, 6);
}

#[test]
fn the_validity_window_is_signed() {
    let (mut state, regulator, _) = founded();
    let mut stretched = SignedCommand::sign(
        CONSORTIUM,
        REGULATOR,
        3,
        Validity::around(at(1_000), 10, 10),
        Command::BeginEpoch {
            epoch: 1,
            delegates: 4,
        },
        &regulator.key,
    );
    stretched.validity.not_after = at(5_000);
    assert_eq!(
        state.apply(&stretched, at(2_000)),
        Outcome::Refused(Refusal::BadSignature)
    );
    assert_eq!(state.current_epoch(), 1);
}

#[test]
fn an_inverted_or_overlong_window_is_malformed() {
    let (mut state, regulator, _) = founded();
    for (sequence, validity) in [
        (
            3,
            Validity {
                not_before: at(10),
                not_after: at(9),
            },
        ),
        (
            4,
            Validity {
                not_before: at(0),
                not_after: at(limits::MAX_VALIDITY_MS + 1),
            },
        ),
    ] {
        assert!(!validity.is_well_formed());
        let command = SignedCommand::sign(
            CONSORTIUM,
            REGULATOR,
            sequence,
            validity,
            Command::BeginEpoch {
                epoch: 1,
                delegates: 4,
            },
            &regulator.key,
        );
        assert_eq!(
            state.apply(&command, at(9)),
            Outcome::Refused(Refusal::Malformed)
        );
    }
    assert_eq!(state.current_epoch(), 1);
    assert_eq!(
        Validity::around(at(5), 10, u64::MAX),
        Validity {
            not_before: at(0),
            not_after: at(u64::MAX)
        }
    );
}

#[test]
fn a_genesis_outside_its_window_founds_nothing() {
    let regulator = regulator();
    let genesis = SignedCommand::sign(
        CONSORTIUM,
        REGULATOR,
        1,
        Validity::around(at(10_000), 0, 100),
        Command::Genesis {
            regulator: regulator.admission.clone(),
            election: ElectionParams::NONE,
        },
        &regulator.key,
    );
    let mut state = GovernanceState::new();
    assert_eq!(
        state.apply(&genesis, at(10_101)),
        Outcome::Refused(Refusal::Expired)
    );
    assert_eq!(state.consortium(), None);
    assert_eq!(
        state.apply(&genesis, at(9_999)),
        Outcome::Refused(Refusal::NotYetValid)
    );
    assert_eq!(state.apply(&genesis, at(10_050)), Outcome::Accepted);
}

#[test]
fn the_admission_check_is_the_one_admit_makes() {
    let (mut state, regulator, h1) = founded();
    let h2 = hospital("h2", 12);
    let Command::Admit { member, possession } = admit_command(&h2) else {
        unreachable!()
    };
    assert_eq!(state.check_admission(&member, &possession), Ok(()));

    // What the check refuses, admitting refuses with the same reason.
    let mut copycat = member.clone();
    copycat.keys.signing_key = h1.admission.keys.signing_key;
    let mut taken_node = member.clone();
    taken_node.node_id = h1.admission.node_id;
    let mut regulator_kind = member.clone();
    regulator_kind.kind = MemberKind::Regulator;
    let cases = [
        (h1.admission.clone(), possession, Refusal::MemberExists),
        (copycat, possession, Refusal::SigningKeyInUse),
        (taken_node, possession, Refusal::NodeIdTaken),
        (regulator_kind, possession, Refusal::SecondRegulator),
        (
            member.clone(),
            Signature::from_bytes(&[7; 64]),
            Refusal::BadKeyProof,
        ),
    ];
    for (sequence, (admission, proof, reason)) in (3..).zip(cases) {
        assert_eq!(state.check_admission(&admission, &proof), Err(reason));
        let command = sign(
            REGULATOR,
            sequence,
            Command::Admit {
                member: admission,
                possession: proof,
            },
            &regulator.key,
        );
        assert_eq!(state.apply(&command, at(3)), Outcome::Refused(reason));
    }
    assert_eq!(
        GovernanceState::new().check_admission(&member, &possession),
        Err(Refusal::NoGenesis)
    );
}

#[test]
fn a_join_request_is_an_admission_signed_by_the_applicant() {
    let (_, regulator, _) = founded();
    let h2 = hospital("h2", 12);
    let own = SignedCommand::sign(CONSORTIUM, "h2", 0, window(), admit_command(&h2), &h2.key);
    let (member, _) = own.join_request().expect("a join request");
    assert_eq!(member.id, "h2");
    let by_regulator = sign(REGULATOR, 3, admit_command(&h2), &regulator.key);
    assert!(by_regulator.join_request().is_none());
    let under_another_name =
        SignedCommand::sign(CONSORTIUM, "h3", 0, window(), admit_command(&h2), &h2.key);
    assert!(under_another_name.join_request().is_none());
    let not_an_admission = sign(
        "h2",
        1,
        Command::BeginEpoch {
            epoch: 1,
            delegates: 4,
        },
        &h2.key,
    );
    assert!(not_an_admission.join_request().is_none());
}

#[test]
fn the_key_history_keeps_every_accepted_signing_key_and_no_refused_one() {
    let regulator = regulator();
    let h1 = hospital("h1", 11);
    let fresh = SigningKey::from_bytes(&[21; 32]);
    let keys = keys_from(21, &fresh);
    let rotate = Command::RotateKeys {
        member: "h1".into(),
        keys: keys.clone(),
        possession: keys.prove_possession(CONSORTIUM, "h1", &fresh),
    };
    // A rotation the regulator signs for h1 is refused: its key must not count.
    let mallory = SigningKey::from_bytes(&[31; 32]);
    let forged_keys = keys_from(31, &mallory);
    let forged = Command::RotateKeys {
        member: "h1".into(),
        keys: forged_keys.clone(),
        possession: forged_keys.prove_possession(CONSORTIUM, "h1", &mallory),
    };
    let history = [
        sign(
            REGULATOR,
            1,
            Command::Genesis {
                regulator: regulator.admission.clone(),
                election: ElectionParams::NONE,
            },
            &regulator.key,
        ),
        sign(REGULATOR, 2, admit_command(&h1), &regulator.key),
        sign(REGULATOR, 3, forged, &regulator.key),
        sign("h1", 1, rotate, &h1.key),
        sign(
            REGULATOR,
            4,
            Command::Revoke {
                member: "h1".into(),
                reason: "test".into(),
            },
            &regulator.key,
        ),
    ];
    let mut held = KeyHistory::new();
    for (i, command) in history.iter().enumerate() {
        held.apply_next(command, at(i as u64 + 1));
    }
    assert_eq!(held.seen(), history.len());
    let h1_keys = [PublicKey::of(&h1.key), PublicKey::of(&fresh)];
    assert_eq!(held.held("h1"), h1_keys);
    assert_eq!(held.held(REGULATOR), [PublicKey::of(&regulator.key)]);
    // The verifying roster keeps the revoked member's keys: what it signed stays valid.
    let roster = held.roster(DelegateSet::new(vec![PublicKey([9; 32])]).unwrap());
    assert!(roster.check_signer("h1", &h1_keys[0]).is_ok());
    assert!(roster.check_signer("h1", &h1_keys[1]).is_ok());
    assert!(roster.check_signer("h1", &PublicKey::of(&mallory)).is_err());
}

/// The seat `party` has in an epoch begun now, with its admission's stake and keys.
fn seat_of(party: &Party) -> EpochSeat {
    let keys = &party.admission.keys;
    EpochSeat {
        member: party.admission.id.clone(),
        stake: party.admission.stake,
        signing_key: keys.signing_key,
        vote_key: keys.vote_key,
        beacon_key: keys.beacon_key,
    }
}

#[test]
fn every_epoch_records_its_seats_in_member_order() {
    let mut state = GovernanceState::new();
    let regulator = regulator();
    genesis(&mut state, &regulator);
    assert_eq!(state.epoch(0).unwrap().seats, [seat_of(&regulator)]);
    let (h1, h2) = (hospital("h1", 11), hospital("h2", 12));
    // Admitted out of id order: the seats are in id order all the same.
    let admit = sign(REGULATOR, 2, admit_command(&h2), &regulator.key);
    assert_eq!(state.apply(&admit, at(2)), Outcome::Accepted);
    let admit = sign(REGULATOR, 3, admit_command(&h1), &regulator.key);
    assert_eq!(state.apply(&admit, at(3)), Outcome::Accepted);
    assert_eq!(state.current_epoch(), 2);
    assert_eq!(
        state.epoch(1).unwrap().seats,
        [seat_of(&h2), seat_of(&regulator)]
    );
    let epoch = state.epoch(2).unwrap();
    assert_eq!(
        epoch.seats,
        [seat_of(&h1), seat_of(&h2), seat_of(&regulator)]
    );
    assert_eq!(epoch.seat("h2"), Some(&seat_of(&h2)));
    assert_eq!(epoch.seat("h3"), None);
    assert_eq!(state.epoch(1).unwrap().seat("h1"), None);
    // A command that changes no seat and no delegate begins nothing.
    let wrap = sign(
        REGULATOR,
        4,
        Command::WrapLinkKey {
            version: 1,
            wrapped: vec![("h1".into(), vec![1; 256])],
        },
        &regulator.key,
    );
    assert_eq!(state.apply(&wrap, at(4)), Outcome::Accepted);
    assert_eq!(state.current_epoch(), 2);
    // The regulator's own epoch records the seats too.
    let begin = sign(
        REGULATOR,
        5,
        Command::BeginEpoch {
            epoch: 3,
            delegates: 1,
        },
        &regulator.key,
    );
    assert_eq!(state.apply(&begin, at(5)), Outcome::Accepted);
    assert_eq!(state.epoch(3).unwrap().seats, state.epoch(2).unwrap().seats);
}

#[test]
fn every_seat_change_begins_an_epoch_even_when_the_delegates_stay() {
    let (mut state, regulator, h1) = founded();
    let mut h2 = hospital("h2", 12);
    let admit = sign(REGULATOR, 3, admit_command(&h2), &regulator.key);
    assert_eq!(state.apply(&admit, at(3)), Outcome::Accepted);
    // K = 1: h1 (equal stakes, first by id) is the only delegate, h2 only has a seat.
    let begin = sign(
        REGULATOR,
        4,
        Command::BeginEpoch {
            epoch: 3,
            delegates: 1,
        },
        &regulator.key,
    );
    assert_eq!(state.apply(&begin, at(4)), Outcome::Accepted);
    let delegates = vec![("h1".to_owned(), h1.admission.keys.signing_key)];
    assert_eq!(state.current_delegates(), delegates);
    let mut epoch = 3;
    let mut next = |state: &GovernanceState, began: bool| {
        if began {
            epoch += 1;
        }
        assert_eq!(state.current_epoch(), epoch);
        assert_eq!(state.current_delegates(), delegates);
        state.epoch(epoch).unwrap().clone()
    };

    // A stake.
    let stake = sign(
        REGULATOR,
        5,
        Command::SetStake {
            member: "h2".into(),
            stake: 40,
        },
        &regulator.key,
    );
    assert_eq!(state.apply(&stake, at(5)), Outcome::Accepted);
    h2.admission.stake = 40;
    let current = next(&state, true);
    assert_eq!(current.started_at, at(5));
    assert_eq!(current.seat("h2"), Some(&seat_of(&h2)));

    // A key rotation: every key of the seat is the new one.
    let fresh = SigningKey::from_bytes(&[22; 32]);
    let keys = keys_from(22, &fresh);
    let rotate = |sequence, keys: &MemberKeys, signer: &SigningKey| {
        sign(
            "h2",
            sequence,
            Command::RotateKeys {
                member: "h2".into(),
                keys: keys.clone(),
                possession: keys.prove_possession(CONSORTIUM, "h2", &fresh),
            },
            signer,
        )
    };
    assert_eq!(
        state.apply(&rotate(1, &keys, &h2.key), at(6)),
        Outcome::Accepted
    );
    h2.admission.keys = keys;
    h2.key = fresh.clone();
    let current = next(&state, true);
    assert_eq!(current.seat("h2"), Some(&seat_of(&h2)));
    assert_eq!(current.seat("h2").unwrap().beacon_key, [172; 32]);

    // A suspension takes the seat away, a reinstatement gives it back.
    let suspend = sign(
        REGULATOR,
        6,
        Command::Suspend {
            member: "h2".into(),
            reason: "audit".into(),
        },
        &regulator.key,
    );
    assert_eq!(state.apply(&suspend, at(7)), Outcome::Accepted);
    let current = next(&state, true);
    assert_eq!(current.seat("h2"), None);
    assert_eq!(current.seats, [seat_of(&h1), seat_of(&regulator)]);

    // A suspended member's rotation changes no seat: it begins nothing.
    let keys = keys_from(23, &fresh);
    assert_eq!(
        state.apply(&rotate(2, &keys, &h2.key), at(8)),
        Outcome::Accepted
    );
    h2.admission.keys = keys;
    next(&state, false);

    let reinstate = sign(
        REGULATOR,
        7,
        Command::Reinstate {
            member: "h2".into(),
        },
        &regulator.key,
    );
    assert_eq!(state.apply(&reinstate, at(9)), Outcome::Accepted);
    let current = next(&state, true);
    assert_eq!(current.seat("h2"), Some(&seat_of(&h2)));

    // A revocation takes it away for good.
    let revoke = sign(
        REGULATOR,
        8,
        Command::Revoke {
            member: "h2".into(),
            reason: "breach".into(),
        },
        &regulator.key,
    );
    assert_eq!(state.apply(&revoke, at(10)), Outcome::Accepted);
    let current = next(&state, true);
    assert_eq!(current.seat("h2"), None);
    // The earlier epochs keep the seats they began with.
    assert_eq!(state.epoch(4).unwrap().seat("h2").unwrap().stake, 40);
    assert_eq!(
        state.epoch(4).unwrap().seat("h2").unwrap().beacon_key,
        [162; 32]
    );
    // Seats survive the state's encoding.
    assert_eq!(
        GovernanceState::from_bytes(&state.to_bytes()).unwrap(),
        state
    );
}

#[test]
fn a_beacon_key_held_by_another_member_is_refused() {
    let (mut state, regulator, h1) = founded();
    let mut thief = hospital("h2", 12);
    thief.admission.keys.beacon_key = h1.admission.keys.beacon_key;
    let admit = sign(REGULATOR, 3, admit_command(&thief), &regulator.key);
    assert_eq!(
        state.apply(&admit, at(3)),
        Outcome::Refused(Refusal::BeaconKeyInUse)
    );
    assert_eq!(
        state.check_admission(
            &thief.admission,
            &thief
                .admission
                .keys
                .prove_possession(CONSORTIUM, "h2", &thief.key)
        ),
        Err(Refusal::BeaconKeyInUse)
    );
    // Nor can a rotation take it; keeping one's own is allowed.
    let fresh = SigningKey::from_bytes(&[21; 32]);
    let mut keys = keys_from(21, &fresh);
    keys.beacon_key = regulator.admission.keys.beacon_key;
    let rotate = |sequence, keys: &MemberKeys| {
        sign(
            "h1",
            sequence,
            Command::RotateKeys {
                member: "h1".into(),
                keys: keys.clone(),
                possession: keys.prove_possession(CONSORTIUM, "h1", &fresh),
            },
            &h1.key,
        )
    };
    assert_eq!(
        state.apply(&rotate(1, &keys), at(4)),
        Outcome::Refused(Refusal::BeaconKeyInUse)
    );
    keys.beacon_key = h1.admission.keys.beacon_key;
    assert_eq!(state.apply(&rotate(2, &keys), at(5)), Outcome::Accepted);
    // The refusal keeps its own code through the state's encoding.
    assert_eq!(last_refusal(&state).reason, Refusal::BeaconKeyInUse);
    let decoded = GovernanceState::from_bytes(&state.to_bytes()).unwrap();
    assert_eq!(
        decoded.refusals().last().unwrap().reason,
        Refusal::BeaconKeyInUse
    );
}

#[test]
fn election_params_are_set_at_genesis_validated_and_encoded() {
    assert_eq!(
        GovernanceState::new().election_params(),
        ElectionParams::NONE
    );
    assert!(!ElectionParams::NONE.elects());
    let params = |epoch_blocks, max_consecutive| ElectionParams {
        epoch_blocks,
        max_consecutive,
    };
    for valid in [params(0, 1), params(3, 1), params(100, 7)] {
        assert!(valid.is_valid(), "{valid:?}");
    }
    for invalid in [params(1, 2), params(2, 2), params(3, 0), params(0, 0)] {
        assert!(!invalid.is_valid(), "{invalid:?}");
    }
    let regulator = regulator();
    let genesis_with = |sequence, election| {
        sign(
            REGULATOR,
            sequence,
            Command::Genesis {
                regulator: regulator.admission.clone(),
                election,
            },
            &regulator.key,
        )
    };
    // Invalid parameters make a malformed genesis, which founds nothing.
    let mut state = GovernanceState::new();
    for (sequence, invalid) in [(1, params(2, 2)), (2, params(12, 0))] {
        let command = genesis_with(sequence, invalid);
        assert!(!command.is_encodable());
        assert_eq!(
            state.apply(&command, at(1)),
            Outcome::Refused(Refusal::Malformed)
        );
    }
    assert_eq!(state.consortium(), None);
    assert_eq!(state.election_params(), ElectionParams::NONE);

    let chosen = params(12, 3);
    let command = genesis_with(3, chosen);
    assert!(command.is_encodable());
    assert_eq!(
        SignedCommand::from_bytes(&command.to_bytes()).unwrap(),
        command
    );
    assert_eq!(state.apply(&command, at(2)), Outcome::Accepted);
    assert_eq!(state.election_params(), chosen);
    assert!(chosen.elects());
    // The delegates still follow the K highest stakes (the chain's election chooses its own
    // from the seats), and the parameters survive the snapshot encoding.
    assert_eq!(
        state.current_delegates(),
        [(REGULATOR.to_owned(), regulator.admission.keys.signing_key)]
    );
    let bytes = state.to_bytes();
    let decoded = GovernanceState::from_bytes(&bytes).unwrap();
    assert_eq!(decoded.election_params(), chosen);
    assert_eq!(decoded, state);
    assert_eq!(decoded.to_bytes(), bytes);
}

#[test]
fn seats_out_of_member_order_are_another_encoding() {
    let (h1, h2) = (hospital("h1", 11), hospital("h2", 12));
    let mut epoch = Epoch {
        started_at: at(1),
        delegates: vec![("h1".into(), h1.admission.keys.signing_key)],
        seats: vec![seat_of(&h1), seat_of(&h2)],
    };
    let decode = |epoch: &Epoch| {
        let mut w = crate::codec::Writer::default();
        epoch.write(&mut w);
        Epoch::read(&mut crate::codec::Reader::new(w.as_slice()))
    };
    assert_eq!(decode(&epoch).as_ref(), Ok(&epoch));
    epoch.seats.reverse();
    assert_eq!(
        decode(&epoch),
        Err(DecodeError::NotCanonical("epoch seats"))
    );
    epoch.seats = vec![seat_of(&h1), seat_of(&h1)];
    assert_eq!(
        decode(&epoch),
        Err(DecodeError::NotCanonical("epoch seats"))
    );
}

#[test]
fn with_an_election_k_is_set_at_the_founding_and_never_changed() {
    let begin = |epoch, delegates| Command::BeginEpoch { epoch, delegates };
    for (election, later_k_accepted) in [
        (ElectionParams::NONE, true),
        (
            ElectionParams {
                epoch_blocks: 20,
                max_consecutive: 1,
            },
            false,
        ),
    ] {
        let mut state = GovernanceState::new();
        let regulator = regulator();
        let genesis = sign(
            REGULATOR,
            1,
            Command::Genesis {
                regulator: regulator.admission.clone(),
                election,
            },
            &regulator.key,
        );
        assert_eq!(state.apply(&genesis, at(1)), Outcome::Accepted);
        // The founding's own epoch sets K.
        let first = sign(REGULATOR, 2, begin(1, 4), &regulator.key);
        assert_eq!(state.apply(&first, at(2)), Outcome::Accepted);
        // Keeping K begins an epoch either way.
        let same = sign(REGULATOR, 3, begin(2, 4), &regulator.key);
        assert_eq!(state.apply(&same, at(3)), Outcome::Accepted);
        let other = sign(REGULATOR, 4, begin(3, 7), &regulator.key);
        let outcome = state.apply(&other, at(4));
        if later_k_accepted {
            assert_eq!(outcome, Outcome::Accepted);
            assert_eq!(state.delegates_k(), 7);
        } else {
            assert_eq!(outcome, Outcome::Refused(Refusal::DelegatesFixed));
            assert_eq!(state.delegates_k(), 4);
            assert_eq!(state.current_epoch(), 2);
        }
    }
}
