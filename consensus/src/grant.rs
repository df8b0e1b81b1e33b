//! Consent on the chain: an institution's grant of access to one person's records for another
//! member, and its revocation, each an item of a batch the granting institution signs (the
//! batch's institution is the grantor: no member can grant access to records it does not hold).
//!
//! A grant names the person only by the fingerprint (the keyed hash the whole consortium
//! computes alike), the consent it comes from by the grantor's own id and version of it, and its
//! scope: the grantee institution (and, optionally, the grantee's role), the purposes of use,
//! the resource types, and a validity period. A consent's state is whatever the latest of its
//! items on the chain says: a grant for a newer version replaces the older one, a revocation
//! ends every grant of it filed before, a later grant starts it again. Whether a grant lets a
//! request through is [`decide`], a pure function with the time passed in.
//!
//! The chain indexes each grant under (grantor, fingerprint, grantee, consent) and each
//! consent's latest item under (grantor, consent) ([`grant_key`], [`consent_key`]); both are
//! replaced by later blocks, so a grant is current exactly when its consent's latest item is
//! in its batch.

use fhirseal_storage::chain_store::{composite_key, EntryLocation};

use crate::codec::{limits, DecodeError, Reader, Wire, Writer};
use crate::error::{Error, Result};
use crate::tx::{Batch, Item, Timestamp, TxKind};

/// Most purposes of use in one grant.
pub const MAX_PURPOSES: usize = 16;
/// Most resource types in one grant.
pub const MAX_RESOURCE_TYPES: usize = 64;

/// A grant of access to one person's records held by the batch's institution (the grantor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The grantor's logical id of the `Consent` it comes from.
    pub consent: String,
    /// The version of that `Consent`.
    pub version: String,
    /// The person's fingerprint.
    pub fingerprint: [u8; 32],
    /// The member institution granted access.
    pub grantee: String,
    /// The grantee's role it is limited to; empty: any role the grantee's own policy lets read.
    pub grantee_role: String,
    /// Purposes of use (codes such as `TREAT`), at least one.
    pub purposes: Vec<String>,
    /// Resource types it covers; empty: every type.
    pub resource_types: Vec<String>,
    /// From when (milliseconds since the Unix epoch); 0: from its block on.
    pub not_before: Timestamp,
    /// Until when, exclusive; 0: no end.
    pub expiry: Timestamp,
}

impl Grant {
    /// Whether it covers records of `resource_type`.
    pub fn covers(&self, resource_type: &str) -> bool {
        self.resource_types.is_empty() || self.resource_types.iter().any(|t| t == resource_type)
    }
}

/// The end of every grant of one `Consent` of the batch's institution filed before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The grantor's logical id of the `Consent`.
    pub consent: String,
    /// The grantor's id of the request that revoked it (made the `Consent` inactive, or
    /// deleted it), which its node's log and access events name.
    pub request: String,
}

/// Grants, signed by the grantor.
pub type GrantBatch = Batch<Grant>;
/// Revocations, signed by the grantor.
pub type RevocationBatch = Batch<Revocation>;

fn write_list(w: &mut Writer, items: &[String]) {
    w.len(items.len());
    for item in items {
        w.str(item);
    }
}

fn read_list(
    r: &mut Reader<'_>,
    field: &'static str,
    max: usize,
) -> Result<Vec<String>, DecodeError> {
    // Each string is at least its 4-byte length.
    let n = r.count(field, max, 4)?;
    (0..n)
        .map(|_| r.string(field, limits::MAX_NAME_LEN))
        .collect()
}

impl Wire for Grant {
    const MIN_LEN: usize = 4 + 4 + 32 + 4 + 4 + 4 + 4 + 8 + 8;

    fn write(&self, w: &mut Writer) {
        w.str(&self.consent);
        w.str(&self.version);
        w.raw(&self.fingerprint);
        w.str(&self.grantee);
        w.str(&self.grantee_role);
        write_list(w, &self.purposes);
        write_list(w, &self.resource_types);
        w.u64(self.not_before.0);
        w.u64(self.expiry.0);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            consent: r.string("grant consent", limits::MAX_NAME_LEN)?,
            version: r.string("grant version", limits::MAX_NAME_LEN)?,
            fingerprint: r.array("grant fingerprint")?,
            grantee: r.string("grant grantee", limits::MAX_NAME_LEN)?,
            grantee_role: r.string("grant grantee role", limits::MAX_NAME_LEN)?,
            purposes: read_list(r, "grant purposes", MAX_PURPOSES)?,
            resource_types: read_list(r, "grant resource types", MAX_RESOURCE_TYPES)?,
            not_before: Timestamp(r.u64("grant not before")?),
            expiry: Timestamp(r.u64("grant expiry")?),
        })
    }
}

impl Wire for Revocation {
    const MIN_LEN: usize = 4 + 4;

    fn write(&self, w: &mut Writer) {
        w.str(&self.consent);
        w.str(&self.request);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            consent: r.string("revocation consent", limits::MAX_NAME_LEN)?,
            request: r.string("revocation request", limits::MAX_NAME_LEN)?,
        })
    }
}

fn check_text(value: &str, what: &'static str) -> Result<()> {
    if value.is_empty() || value.len() > limits::MAX_NAME_LEN {
        return Err(Error::InvalidBatch(what));
    }
    Ok(())
}

impl Item for Grant {
    const KIND: TxKind = TxKind::Grant;

    /// The grantor is the batch's institution; the grant names only the grantee.
    fn institution(&self) -> Option<&str> {
        None
    }

    fn check(&self) -> Result<()> {
        check_text(&self.consent, "grant consent empty or too long")?;
        check_text(&self.version, "grant version empty or too long")?;
        check_text(&self.grantee, "grant grantee empty or too long")?;
        if self.grantee_role.len() > limits::MAX_NAME_LEN {
            return Err(Error::InvalidBatch("grant grantee role too long"));
        }
        if self.purposes.is_empty() || self.purposes.len() > MAX_PURPOSES {
            return Err(Error::InvalidBatch("a grant names 1 to 16 purposes of use"));
        }
        if self.resource_types.len() > MAX_RESOURCE_TYPES {
            return Err(Error::InvalidBatch(
                "a grant names at most 64 resource types",
            ));
        }
        for purpose in &self.purposes {
            check_text(purpose, "grant purpose empty or too long")?;
        }
        for resource_type in &self.resource_types {
            check_text(resource_type, "grant resource type empty or too long")?;
        }
        if self.expiry.0 != 0 && self.expiry <= self.not_before {
            return Err(Error::InvalidBatch("a grant expires before it starts"));
        }
        Ok(())
    }
}

impl Item for Revocation {
    const KIND: TxKind = TxKind::Revocation;

    fn institution(&self) -> Option<&str> {
        None
    }

    fn check(&self) -> Result<()> {
        check_text(&self.consent, "revocation consent empty or too long")?;
        check_text(&self.request, "revocation request empty or too long")
    }
}

/// The index key of a grant: grantor, fingerprint, grantee, consent. The keys of one grantor's
/// grants for one person to one grantee share [`grants_prefix`].
pub fn grant_key(grantor: &str, fingerprint: &[u8; 32], grantee: &str, consent: &str) -> Vec<u8> {
    composite_key(&[
        b"grant",
        grantor.as_bytes(),
        fingerprint,
        grantee.as_bytes(),
        consent.as_bytes(),
    ])
}

/// The prefix of the keys of `grantor`'s grants for the person `fingerprint` to `grantee`.
pub fn grants_prefix(grantor: &str, fingerprint: &[u8; 32], grantee: &str) -> Vec<u8> {
    composite_key(&[
        b"grant",
        grantor.as_bytes(),
        fingerprint,
        grantee.as_bytes(),
    ])
}

/// The index key of a consent's latest item (grant or revocation).
pub fn consent_key(grantor: &str, consent: &str) -> Vec<u8> {
    composite_key(&[b"consent", grantor.as_bytes(), consent.as_bytes()])
}

/// A grant as the chain holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    /// The institution that signed it.
    pub grantor: String,
    /// The grant.
    pub grant: Grant,
    /// Where it is.
    pub location: EntryLocation,
    /// The time of its block: it takes effect there.
    pub granted_at: Timestamp,
    /// Whether its consent's latest item is its batch (the grants of one version of a
    /// consent, one per grantee): `false` once a revocation or a grant of a newer version of
    /// the consent is on the chain.
    pub current: bool,
}

/// A request to read records under a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantRequest<'a> {
    /// The requester's institution.
    pub grantee: &'a str,
    /// The requester's role there.
    pub role: &'a str,
    /// The purpose of use it states.
    pub purpose: &'a str,
    /// The resource type it reads; `None`: the person's records of whatever types the grant
    /// covers (each then kept or not by [`Grant::covers`]).
    pub resource_type: Option<&'a str>,
    /// Now (milliseconds since the Unix epoch).
    pub now: Timestamp,
}

/// Why no grant lets a request through, the most telling first in [`decide`]'s choice (a grant
/// that covers everything but the purpose says more than one that was revoked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum GrantRefusal {
    #[error("no grant for this person to this institution is on the chain")]
    NoGrant,
    #[error("the grant was revoked")]
    Revoked,
    #[error("the grant has expired")]
    Expired,
    #[error("the grant is not in effect yet")]
    NotYet,
    #[error("the grant is for another role")]
    Role,
    #[error("the grant does not cover this resource type")]
    ResourceType,
    #[error("the grant does not cover this purpose of use")]
    Purpose,
}

/// Whether one grant lets `request` through.
pub fn permits(record: &GrantRecord, request: &GrantRequest<'_>) -> Result<(), GrantRefusal> {
    let grant = &record.grant;
    if !record.current || grant.grantee != request.grantee {
        return Err(GrantRefusal::Revoked);
    }
    if grant.expiry.0 != 0 && request.now >= grant.expiry {
        return Err(GrantRefusal::Expired);
    }
    if request.now < grant.not_before || request.now < record.granted_at {
        return Err(GrantRefusal::NotYet);
    }
    if !grant.grantee_role.is_empty() && grant.grantee_role != request.role {
        return Err(GrantRefusal::Role);
    }
    if request.resource_type.is_some_and(|t| !grant.covers(t)) {
        return Err(GrantRefusal::ResourceType);
    }
    if !grant.purposes.iter().any(|p| p == request.purpose) {
        return Err(GrantRefusal::Purpose);
    }
    Ok(())
}

/// The grant among `records` that lets `request` through (the first), or the most telling
/// refusal.
pub fn decide<'g>(
    records: &'g [GrantRecord],
    request: &GrantRequest<'_>,
) -> Result<&'g GrantRecord, GrantRefusal> {
    let all = permitting(records, request)?;
    all.into_iter().next().ok_or(GrantRefusal::NoGrant)
}

/// Every grant among `records` that lets `request` through (a request for a person's records
/// of whatever types is let through by each, for the types each covers), or the most telling
/// refusal when none does.
pub fn permitting<'g>(
    records: &'g [GrantRecord],
    request: &GrantRequest<'_>,
) -> Result<Vec<&'g GrantRecord>, GrantRefusal> {
    let mut refusal = GrantRefusal::NoGrant;
    let mut all = Vec::new();
    for record in records {
        match permits(record, request) {
            Ok(()) => all.push(record),
            Err(why) => refusal = refusal.max(why),
        }
    }
    if all.is_empty() {
        Err(refusal)
    } else {
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            consent: "c1".into(),
            version: "1".into(),
            fingerprint: [7; 32],
            grantee: "h2".into(),
            grantee_role: String::new(),
            purposes: vec!["TREAT".into()],
            resource_types: vec!["Patient".into(), "Observation".into()],
            not_before: Timestamp(1_000),
            expiry: Timestamp(5_000),
        }
    }

    fn record(grant: Grant, current: bool) -> GrantRecord {
        GrantRecord {
            grantor: "h1".into(),
            grant,
            location: EntryLocation {
                height: 3,
                transaction: 0,
                entry: 0,
            },
            granted_at: Timestamp(900),
            current,
        }
    }

    fn request(now: u64) -> GrantRequest<'static> {
        GrantRequest {
            grantee: "h2",
            role: "clinician",
            purpose: "TREAT",
            resource_type: Some("Observation"),
            now: Timestamp(now),
        }
    }

    #[test]
    fn a_grant_decides_by_its_scope_and_period() {
        let live = [record(grant(), true)];
        // A table of cases: what changes from the request above, and the answer.
        let cases: Vec<(&str, GrantRequest<'static>, Result<(), GrantRefusal>)> = vec![
            ("in scope and period", request(2_000), Ok(())),
            ("at its start", request(1_000), Ok(())),
            ("before its start", request(999), Err(GrantRefusal::NotYet)),
            ("at its expiry", request(5_000), Err(GrantRefusal::Expired)),
            (
                "another purpose",
                GrantRequest {
                    purpose: "HRESCH",
                    ..request(2_000)
                },
                Err(GrantRefusal::Purpose),
            ),
            (
                "another resource type",
                GrantRequest {
                    resource_type: Some("Condition"),
                    ..request(2_000)
                },
                Err(GrantRefusal::ResourceType),
            ),
            (
                "the person's records, of the types it covers",
                GrantRequest {
                    resource_type: None,
                    ..request(2_000)
                },
                Ok(()),
            ),
            (
                "another institution",
                GrantRequest {
                    grantee: "h3",
                    ..request(2_000)
                },
                Err(GrantRefusal::Revoked),
            ),
        ];
        for (name, req, expected) in cases {
            assert_eq!(decide(&live, &req).map(|_| ()), expected, "case: {name}");
        }
        assert_eq!(
            decide(&[], &request(2_000)).map(|_| ()),
            Err(GrantRefusal::NoGrant)
        );
    }

    #[test]
    fn every_permitting_grant_is_found_or_the_most_telling_refusal() {
        let mut other = grant();
        other.consent = "c2".into();
        other.resource_types = vec!["Condition".into()];
        let records = [record(grant(), true), record(other, true)];
        let any_type = GrantRequest {
            resource_type: None,
            ..request(2_000)
        };
        let all = permitting(&records, &any_type).unwrap();
        assert_eq!(all.len(), 2);
        let covered: Vec<bool> = all.iter().map(|g| g.grant.covers("Condition")).collect();
        assert_eq!(covered, [false, true]);
        assert_eq!(
            permitting(
                &records,
                &GrantRequest {
                    purpose: "HRESCH",
                    ..any_type
                }
            )
            .map(|a| a.len()),
            Err(GrantRefusal::Purpose)
        );
        assert_eq!(
            permitting(&[], &any_type).map(|a| a.len()),
            Err(GrantRefusal::NoGrant)
        );
    }

    #[test]
    fn a_grant_covers_its_types_or_every_type() {
        let mut g = grant();
        assert!(g.covers("Patient") && g.covers("Observation") && !g.covers("Condition"));
        g.resource_types.clear();
        assert!(g.covers("Condition"));
    }

    #[test]
    fn a_grant_that_is_not_its_consents_latest_item_lets_nothing_through() {
        let revoked = [record(grant(), false)];
        assert_eq!(
            decide(&revoked, &request(2_000)).map(|_| ()),
            Err(GrantRefusal::Revoked)
        );
        // Of a revoked grant and a current one for another purpose, the current one's reason.
        let mut research = grant();
        research.consent = "c2".into();
        research.purposes = vec!["HRESCH".into()];
        let both = [record(grant(), false), record(research, true)];
        assert_eq!(
            decide(&both, &request(2_000)).map(|_| ()),
            Err(GrantRefusal::Purpose)
        );
    }

    #[test]
    fn open_ended_grants_and_roles() {
        let mut open = grant();
        open.not_before = Timestamp(0);
        open.expiry = Timestamp(0);
        open.resource_types.clear();
        open.grantee_role = "clinician".into();
        let records = [record(open, true)];
        let far = GrantRequest {
            resource_type: Some("Condition"),
            ..request(u64::MAX - 1)
        };
        assert!(decide(&records, &far).is_ok());
        // Not before its block, whatever its own start says.
        assert_eq!(
            decide(&records, &request(899)).map(|_| ()),
            Err(GrantRefusal::NotYet)
        );
        let researcher = GrantRequest {
            role: "researcher",
            ..request(2_000)
        };
        assert_eq!(
            decide(&records, &researcher).map(|_| ()),
            Err(GrantRefusal::Role)
        );
    }

    #[test]
    fn items_are_checked() {
        assert!(grant().check().is_ok());
        let mut bad = grant();
        bad.purposes.clear();
        assert!(bad.check().is_err());
        let mut bad = grant();
        bad.expiry = Timestamp(1_000);
        assert!(bad.check().is_err());
        let mut bad = grant();
        bad.grantee.clear();
        assert!(bad.check().is_err());
        let mut bad = grant();
        bad.resource_types = vec![String::new()];
        assert!(bad.check().is_err());
        assert!(Revocation {
            consent: "c1".into(),
            request: String::new()
        }
        .check()
        .is_err());
    }

    #[test]
    fn items_round_trip_and_forged_counts_are_refused() {
        let g = grant();
        let mut w = Writer::with_capacity(128);
        g.write(&mut w);
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        assert_eq!(Grant::read(&mut r).unwrap(), g);
        r.finish().unwrap();
        // The purposes' count forged to a billion: refused before anything is allocated.
        let at = 4 + 2 + 4 + 1 + 32 + 4 + 2 + 4;
        let mut forged = bytes.clone();
        forged[at..at + 4].copy_from_slice(&1_000_000_000u32.to_be_bytes());
        assert!(Grant::read(&mut Reader::new(&forged)).is_err());
    }
}
