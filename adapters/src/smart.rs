//! SMART on FHIR access tokens, the pure part: scopes ([`Scopes`]: the v2 forms
//! `patient/*.rs`, `user/Observation.r`, `system/*.cruds` and the v1 forms `patient/*.read`,
//! `user/*.write`, `user/*.*`), and the attribute-based policy of a token's bearer
//! ([`decide`]): role × purpose of use × resource type × own institution or granted scope, and
//! for a patient-context token the patient compartment it is confined to. Verifying the token
//! and fetching its issuer's keys is the sidecar's (`sidecar/src/smart.rs`).
//!
//! Least privilege throughout: a scope with a constraint (`patient/Observation.rs?category=…`)
//! grants nothing, since the sidecar does not enforce such constraints; a `patient/…` scope
//! grants nothing without a patient in context; identity (`see-identity`, `identity-search`)
//! is what the role allows, only while a scope allows reading, only for the own institution's
//! staff, and only for a purpose of care (or none stated).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::policy::{self, Denied, Needs, Permission, Role};
use crate::resource::entry_resources;
use crate::route::Interaction;

/// Who a scope speaks for: one patient (the token's `patient` context), the user, or a system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Context {
    Patient,
    User,
    System,
}

impl Context {
    pub fn name(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }
}

/// SMART's five interactions on a resource type (`c`, `r`, `u`, `d`, `s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// create
    Create,
    /// read, vread, instance history, and the resources an answer shows
    Read,
    /// update, patch
    Update,
    /// delete
    Delete,
    /// searches, type and system history
    Search,
}

impl Access {
    /// The v2 letter.
    pub fn letter(self) -> char {
        match self {
            Access::Create => 'c',
            Access::Read => 'r',
            Access::Update => 'u',
            Access::Delete => 'd',
            Access::Search => 's',
        }
    }

    const ALL: [Access; 5] = [
        Access::Create,
        Access::Read,
        Access::Update,
        Access::Delete,
        Access::Search,
    ];
}

/// One resource scope: context, resource type (`*` for all) and interactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub context: Context,
    pub resource_type: String,
    pub accesses: BTreeSet<Access>,
}

/// Why a scope is not a resource scope the sidecar grants by.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("'{0}' is not a SMART resource scope (context/Type.cruds)")]
    Malformed(String),
    #[error("'{0}' carries a constraint, which fhirseal does not enforce: it grants nothing")]
    Constrained(String),
}

impl Scope {
    /// A resource scope; `Ok(None)` for the scopes that grant no resource access (`openid`,
    /// `fhirUser`, `launch`, `launch/patient`, `offline_access`, …).
    pub fn parse(text: &str) -> Result<Option<Scope>, ScopeError> {
        let Some((context, rest)) = text.split_once('/') else {
            return Ok(None);
        };
        let context = match context {
            "patient" => Context::Patient,
            "user" => Context::User,
            "system" => Context::System,
            _ => return Ok(None),
        };
        let malformed = || ScopeError::Malformed(text.to_owned());
        if rest.contains('?') {
            return Err(ScopeError::Constrained(text.to_owned()));
        }
        let (resource_type, action) = rest.split_once('.').ok_or_else(malformed)?;
        let type_ok = resource_type == "*"
            || (resource_type.starts_with(|c: char| c.is_ascii_uppercase())
                && resource_type.len() <= 64
                && resource_type.bytes().all(|b| b.is_ascii_alphanumeric()));
        if !type_ok {
            return Err(malformed());
        }
        let accesses: BTreeSet<Access> = match action {
            // v1: `read` is v2's `rs`, `write` its `cud`, `*` its `cruds`.
            "read" => [Access::Read, Access::Search].into(),
            "write" => [Access::Create, Access::Update, Access::Delete].into(),
            "*" => Access::ALL.into(),
            letters => {
                // v2: a non-empty subsequence of `cruds`, in that order.
                let mut rest = Access::ALL.iter();
                let mut found = BTreeSet::new();
                for letter in letters.chars() {
                    let access = rest
                        .by_ref()
                        .find(|a| a.letter() == letter)
                        .ok_or_else(malformed)?;
                    found.insert(*access);
                }
                if found.is_empty() {
                    return Err(malformed());
                }
                found
            }
        };
        Ok(Some(Scope {
            context,
            resource_type: resource_type.to_owned(),
            accesses,
        }))
    }

    fn covers(&self, resource_type: Option<&str>, access: Access) -> bool {
        self.accesses.contains(&access)
            && (self.resource_type == "*" || Some(self.resource_type.as_str()) == resource_type)
    }
}

/// The resource scopes of a token (its `scope` claim, space-separated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    scopes: Vec<Scope>,
}

impl Scopes {
    /// The resource scopes of `text`, and those that grant nothing because they are malformed
    /// or constrained (for the log).
    pub fn parse(text: &str) -> (Scopes, Vec<ScopeError>) {
        let mut scopes = Vec::new();
        let mut ignored = Vec::new();
        for item in text.split_ascii_whitespace() {
            match Scope::parse(item) {
                Ok(Some(scope)) => scopes.push(scope),
                Ok(None) => {}
                Err(e) => ignored.push(e),
            }
        }
        (Scopes { scopes }, ignored)
    }

    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// Whether a scope of one of `contexts` allows `access` on `resource_type` (`None`: a
    /// system-level interaction, which only a `*` scope covers).
    pub fn allows(
        &self,
        contexts: &[Context],
        resource_type: Option<&str>,
        access: Access,
    ) -> bool {
        self.scopes
            .iter()
            .any(|s| contexts.contains(&s.context) && s.covers(resource_type, access))
    }

    fn any(&self, contexts: &[Context], access: Access) -> bool {
        self.scopes
            .iter()
            .any(|s| contexts.contains(&s.context) && s.accesses.contains(&access))
    }

    fn everything(&self) -> bool {
        self.scopes.iter().any(|s| {
            s.context == Context::System && s.resource_type == "*" && s.accesses.len() == 5
        })
    }
}

/// The contexts a token's scopes count in: `patient/…` only with a patient in context.
fn contexts(patient: Option<&str>) -> &'static [Context] {
    if patient.is_some() {
        &[Context::Patient, Context::User, Context::System]
    } else {
        &[Context::User, Context::System]
    }
}

const UNCONFINED: &[Context] = &[Context::User, Context::System];

/// Purposes of use (HL7 v3 PurposeOfUse) for which identity is merged back and searched:
/// care of the patient. Any other stated purpose (research `HRESCH`, public health `PUBHLTH`,
/// payment `HPAYMT`, operations `HOPERAT`, …) reads pseudonymized data only.
pub const CARE_PURPOSES: &[&str] = &["TREAT", "ETREAT", "CAREMGT", "PATRQT"];

/// The attributes of a token's bearer that the policy weighs.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    /// The role claimed (`fhirseal_role`), as the role table defines it.
    pub role_name: &'a str,
    pub role: &'a Role,
    /// Whether the bearer belongs to this node's institution (its `organization` claim).
    pub own_institution: bool,
    /// The purpose of use claimed, if any.
    pub purpose: Option<&'a str>,
    pub scopes: &'a Scopes,
    /// The patient in context (`patient` claim), to whose compartment `patient/…` scopes are
    /// confined.
    pub patient: Option<&'a str>,
}

/// What the bearer may do as a role: the role's permissions where the scopes allow them, less
/// identity for another institution's staff or a purpose other than care, less the audit trail
/// for another institution. Used for the principal's rights and by [`decide`].
pub fn effective_role(subject: &Subject<'_>) -> Role {
    use Permission as P;
    let scopes = subject.scopes;
    let ctx = contexts(subject.patient);
    let reads = scopes.any(ctx, Access::Read) || scopes.any(ctx, Access::Search);
    let care = subject.purpose.is_none_or(|p| CARE_PURPOSES.contains(&p));
    let allowed = |p: P| match p {
        P::Read => scopes.any(ctx, Access::Read),
        P::Search => scopes.any(ctx, Access::Search),
        P::Write => scopes.any(ctx, Access::Create) || scopes.any(ctx, Access::Update),
        P::Delete => scopes.any(ctx, Access::Delete),
        P::History => reads,
        P::SeeIdentity => reads && care && subject.own_institution,
        P::IdentitySearch => scopes.any(ctx, Access::Search) && care,
        P::Audit => subject.own_institution,
        P::Administer => scopes.everything(),
        // Consent is given by the institution that holds the records, for its own staff.
        P::Consent => {
            subject.own_institution
                && (scopes.any(ctx, Access::Create)
                    || scopes.any(ctx, Access::Update)
                    || scopes.any(ctx, Access::Delete))
        }
    };
    Role {
        permissions: subject
            .role
            .permissions
            .iter()
            .copied()
            .filter(|p| allowed(*p))
            .collect(),
        operations: subject.role.operations.clone(),
    }
}

/// What one request asks, for [`decide`].
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub interaction: &'a Interaction,
    /// The query the client sent (criteria of a search).
    pub query: Option<&'a str>,
    /// Its permissions and operations (`Needs::of`, with a batch's entries).
    pub needs: &'a Needs,
    /// For a batch or transaction, each entry's resource type and interaction
    /// ([`entry_accesses`]).
    pub entries: &'a [(Option<String>, Access)],
}

/// Where a permitted request may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// What the scopes name, for any patient.
    Unconfined,
    /// Only this patient's compartment: searches carry `param=value` added by the sidecar,
    /// what is written and what is answered must be in the compartment ([`in_compartment`]).
    Patient {
        patient: String,
        /// The search parameter added (`patient=<id>`, `_id=<id>` for Patient), if a search.
        search: Option<(String, String)>,
    },
}

/// Why a token's bearer may not make a request: 403, naming what is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Role(#[from] Denied),
    #[error("the role's '{}' permission is granted, but {why}", permission.name())]
    Narrowed { permission: Permission, why: String },
    #[error("insufficient scope: this request needs {needed}")]
    Scope { needed: String },
    #[error("this token is confined to the compartment of its patient: {0}")]
    Compartment(String),
}

/// Parameters a search confined to a patient may not carry: they reach beyond the matches.
const UNCONFINABLE_PARAMS: &[&str] = &[
    "_include",
    "_revinclude",
    "_contained",
    "_containedType",
    "_query",
    "_filter",
];

/// The policy of a token's bearer: whether `subject` may make `request`, and where it reaches.
/// Pure; the sidecar calls it once per request, after authentication and the plan.
pub fn decide(subject: &Subject<'_>, request: &Request<'_>) -> Result<Reach, Refusal> {
    let scopes = subject.scopes;
    let mut confined = false;
    for (resource_type, access) in accesses(request) {
        let rt = resource_type.as_deref();
        if scopes.allows(UNCONFINED, rt, access) {
            continue;
        }
        if subject.patient.is_some() && scopes.allows(&[Context::Patient], rt, access) {
            confined = true;
            continue;
        }
        let ty = rt.unwrap_or("*");
        let letter = access.letter();
        let needed = if subject.patient.is_some() {
            format!("a scope such as user/{ty}.{letter} or patient/{ty}.{letter}")
        } else {
            format!("a scope such as user/{ty}.{letter}")
        };
        return Err(Refusal::Scope { needed });
    }
    // The role itself first, so that a refusal names what the role lacks …
    policy::authorize(subject.role_name, subject.role, request.needs)?;
    // … then what the token's attributes take from it.
    let rights = effective_role(subject);
    match policy::authorize(subject.role_name, &rights, request.needs) {
        Ok(()) => {}
        Err(Denied::Permission { permission, .. }) => {
            return Err(Refusal::Narrowed {
                permission,
                why: narrowed(subject, permission),
            })
        }
        // The operations are the role's: only `administer`, which they need, can be gone.
        Err(Denied::Operation { .. }) => {
            return Err(Refusal::Narrowed {
                permission: Permission::Administer,
                why: narrowed(subject, Permission::Administer),
            })
        }
    }
    match (confined, subject.patient) {
        (true, Some(patient)) => confine(patient, request),
        _ => Ok(Reach::Unconfined),
    }
}

/// Why [`effective_role`] took `permission` from the role.
fn narrowed(subject: &Subject<'_>, permission: Permission) -> String {
    use Permission as P;
    let care = subject.purpose.is_none_or(|p| CARE_PURPOSES.contains(&p));
    match (permission, subject.purpose) {
        (P::SeeIdentity | P::IdentitySearch, Some(purpose)) if !care => {
            format!("not for the purpose of use {purpose}")
        }
        (P::SeeIdentity | P::Audit | P::Consent, _) if !subject.own_institution => {
            "not for another institution's staff".to_owned()
        }
        (P::Administer, _) => "only with the scope system/*.cruds".to_owned(),
        _ => "not with the token's scopes".to_owned(),
    }
}

/// The SMART interactions a request makes, on which resource types.
fn accesses(request: &Request<'_>) -> Vec<(Option<String>, Access)> {
    use Interaction as I;
    let typed = |t: &str, a| vec![((t != "*").then(|| t.to_owned()), a)];
    match request.interaction {
        I::Capabilities => Vec::new(),
        I::Bundle => request.entries.to_vec(),
        I::SearchSystem | I::HistorySystem => {
            if paging_only(request.query) {
                // A page of an earlier search: what it shows is checked in the answer.
                Vec::new()
            } else {
                vec![(None, Access::Search)]
            }
        }
        I::OperationSystem { .. } => vec![(None, Access::Read)],
        I::Create { resource_type } => typed(resource_type, Access::Create),
        I::SearchType { resource_type } | I::HistoryType { resource_type } => {
            typed(resource_type, Access::Search)
        }
        I::ConditionalUpdate { resource_type } | I::ConditionalPatch { resource_type } => {
            let mut both = typed(resource_type, Access::Update);
            both.extend(typed(resource_type, Access::Search));
            both
        }
        I::ConditionalDelete { resource_type } => {
            let mut both = typed(resource_type, Access::Delete);
            both.extend(typed(resource_type, Access::Search));
            both
        }
        I::Read { resource_type, .. }
        | I::VRead { resource_type, .. }
        | I::HistoryInstance { resource_type, .. }
        | I::OperationType { resource_type, .. }
        | I::OperationInstance { resource_type, .. }
        | I::OperationVersion { resource_type, .. } => typed(resource_type, Access::Read),
        I::Update { resource_type, .. } | I::Patch { resource_type, .. } => {
            typed(resource_type, Access::Update)
        }
        I::Delete { resource_type, .. } => typed(resource_type, Access::Delete),
        I::SearchCompartment {
            compartment,
            resource_type,
            ..
        } => {
            let mut both = typed(compartment, Access::Read);
            both.extend(typed(resource_type, Access::Search));
            both
        }
    }
}

/// Whether a system search is only the paging of an earlier one (`_getpages`).
fn paging_only(query: Option<&str>) -> bool {
    let Some(query) = query else { return false };
    let names = crate::search::param_names(query);
    names.iter().any(|n| n == "_getpages")
        && names.iter().all(|n| {
            matches!(
                n.as_str(),
                "_getpages" | "_getpagesoffset" | "_count" | "_format" | "_pretty" | "_bundletype"
            )
        })
}

/// The interactions of a batch or transaction's entries, as [`Request::entries`] takes them.
pub fn entry_accesses(bundle: &Value) -> Vec<(Option<String>, Access)> {
    let mut found = Vec::new();
    let entries = bundle.get("entry").and_then(Value::as_array);
    for entry in entries.into_iter().flatten() {
        let Some(request) = entry.get("request") else {
            continue;
        };
        let text = |key: &str| request.get(key).and_then(Value::as_str).unwrap_or("");
        let Ok(method) = http::Method::from_bytes(text("method").as_bytes()) else {
            continue;
        };
        let url = text("url");
        let (path, query) = match url.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (url, None),
        };
        // An entry that does not route is refused by `policy::bundle_needs` first.
        let Ok(interaction) = crate::route::route(&method, path, query.is_some()) else {
            continue;
        };
        let interaction = match interaction {
            Interaction::Bundle => Interaction::Create {
                resource_type: "Bundle".to_owned(),
            },
            other => other,
        };
        let needs = Needs::default();
        found.extend(accesses(&Request {
            interaction: &interaction,
            query,
            needs: &needs,
            entries: &[],
        }));
    }
    found
}

/// The element of each resource type in the patient compartment that names its patient, and
/// the search parameter on it (FHIR R4's patient CompartmentDefinition, the types a patient's
/// record is made of). Types not listed are outside the reach of a patient-context token.
const COMPARTMENT: &[(&str, &str, &str)] = &[
    ("AllergyIntolerance", "patient", "patient"),
    ("CarePlan", "subject", "patient"),
    ("CareTeam", "subject", "patient"),
    ("Claim", "patient", "patient"),
    ("ClinicalImpression", "subject", "patient"),
    ("Composition", "subject", "patient"),
    ("Condition", "subject", "patient"),
    ("Coverage", "beneficiary", "patient"),
    ("Device", "patient", "patient"),
    ("DiagnosticReport", "subject", "patient"),
    ("DocumentReference", "subject", "patient"),
    ("Encounter", "subject", "patient"),
    ("EpisodeOfCare", "patient", "patient"),
    ("ExplanationOfBenefit", "patient", "patient"),
    ("FamilyMemberHistory", "patient", "patient"),
    ("Flag", "subject", "patient"),
    ("Goal", "subject", "patient"),
    ("ImagingStudy", "subject", "patient"),
    ("Immunization", "patient", "patient"),
    ("List", "subject", "patient"),
    ("MedicationAdministration", "subject", "patient"),
    ("MedicationDispense", "subject", "patient"),
    ("MedicationRequest", "subject", "patient"),
    ("MedicationStatement", "subject", "patient"),
    ("NutritionOrder", "patient", "patient"),
    ("Observation", "subject", "patient"),
    ("Procedure", "subject", "patient"),
    ("QuestionnaireResponse", "subject", "patient"),
    ("RiskAssessment", "subject", "patient"),
    ("ServiceRequest", "subject", "patient"),
    ("Specimen", "subject", "patient"),
];

fn compartment_link(resource_type: &str) -> Option<(&'static str, &'static str)> {
    COMPARTMENT
        .iter()
        .find(|(t, _, _)| *t == resource_type)
        .map(|(_, element, param)| (*element, *param))
}

/// Whether `resource_type` can be confined to a patient's compartment.
pub fn in_patient_compartment(resource_type: &str) -> bool {
    resource_type == "Patient" || compartment_link(resource_type).is_some()
}

/// What confining `request` to `patient`'s compartment takes, or why it cannot be.
fn confine(patient: &str, request: &Request<'_>) -> Result<Reach, Refusal> {
    use Interaction as I;
    let refuse = |why: String| Err(Refusal::Compartment(why));
    let reach = |search: Option<(&str, &str)>| {
        Ok(Reach::Patient {
            patient: patient.to_owned(),
            search: search.map(|(k, v)| (k.to_owned(), v.to_owned())),
        })
    };
    let outside = |t: &str| {
        Err(Refusal::Compartment(format!(
            "{t} is not in the patient compartment"
        )))
    };
    match request.interaction {
        I::Capabilities => reach(None),
        I::Read { resource_type, id }
        | I::VRead {
            resource_type, id, ..
        }
        | I::HistoryInstance { resource_type, id } => {
            if resource_type == "Patient" && id != patient {
                refuse(format!("Patient/{id} is another patient"))
            } else if !in_patient_compartment(resource_type) {
                outside(resource_type)
            } else {
                // The answer is checked to be the patient's before it leaves.
                reach(None)
            }
        }
        I::SearchType { resource_type } => {
            let names = request
                .query
                .map(crate::search::param_names)
                .unwrap_or_default();
            if let Some(name) = names
                .iter()
                .find(|n| UNCONFINABLE_PARAMS.contains(&n.split(':').next().unwrap_or(n)))
            {
                return refuse(format!("a search with '{name}' reaches beyond it"));
            }
            if resource_type == "Patient" {
                reach(Some(("_id", patient)))
            } else if let Some((_, param)) = compartment_link(resource_type) {
                reach(Some((param, &format!("Patient/{patient}"))))
            } else {
                outside(resource_type)
            }
        }
        I::SearchCompartment {
            compartment, id, ..
        } => {
            if compartment == "Patient" && id == patient {
                reach(None)
            } else {
                refuse(format!("{compartment}/{id} is not its patient"))
            }
        }
        I::SearchSystem | I::HistorySystem if paging_only(request.query) => reach(None),
        I::Create { resource_type } => {
            if compartment_link(resource_type).is_some() {
                // The body is checked to be the patient's before it is stored.
                reach(None)
            } else {
                outside(resource_type)
            }
        }
        I::Update { resource_type, id } if resource_type == "Patient" => {
            if id == patient {
                reach(None)
            } else {
                refuse(format!("Patient/{id} is another patient"))
            }
        }
        other => refuse(format!(
            "a {} cannot be confined to one patient",
            other.name()
        )),
    }
}

/// Whether `value` — a resource, or a Bundle of them — lies in `patient`'s compartment: the
/// Patient itself, or a resource whose patient element refers to it. An `OperationOutcome`
/// (a search's warnings) is in every compartment.
pub fn in_compartment(value: &Value, patient: &str) -> bool {
    let Some(resource_type) = value.get("resourceType").and_then(Value::as_str) else {
        return false;
    };
    match resource_type {
        "OperationOutcome" => true,
        "Bundle" => entry_resources(value).all(|r| in_compartment(r, patient)),
        "Patient" => value.get("id").and_then(Value::as_str) == Some(patient),
        other => compartment_link(other).is_some_and(|(element, _)| {
            value
                .get(element)
                .and_then(|r| r.get("reference"))
                .and_then(Value::as_str)
                .is_some_and(|r| refers_to(r, patient))
        }),
    }
}

/// Whether a reference (`Patient/1`, `https://…/Patient/1`, `Patient/1/_history/2`) names
/// `Patient/<patient>`.
fn refers_to(reference: &str, patient: &str) -> bool {
    let path = reference
        .split_once("/_history/")
        .map_or(reference, |(p, _)| p);
    let expected = format!("Patient/{patient}");
    path == expected || path.ends_with(&format!("/{expected}"))
}

/// The resources an answer shows (a resource, or a Bundle's entries) that the scopes do not let
/// the bearer read: their type is named by no `r` or `s` scope, or only by a `patient/…` scope
/// while the resource is another patient's. The first such one's type, if any.
pub fn unreadable(value: &Value, scopes: &Scopes, patient: Option<&str>) -> Option<String> {
    let resource_type = value.get("resourceType").and_then(Value::as_str)?;
    match resource_type {
        "OperationOutcome" => None,
        "Bundle" => entry_resources(value).find_map(|r| unreadable(r, scopes, patient)),
        other => {
            let readable = |ctx: &[Context]| {
                scopes.allows(ctx, Some(other), Access::Read)
                    || scopes.allows(ctx, Some(other), Access::Search)
            };
            if readable(UNCONFINED) {
                return None;
            }
            match patient {
                Some(p) if readable(&[Context::Patient]) && in_compartment(value, p) => None,
                _ => Some(other.to_owned()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scopes(text: &str) -> Scopes {
        Scopes::parse(text).0
    }

    #[test]
    fn scope_forms() {
        use Access::*;
        let one = |s: &str| Scope::parse(s).unwrap().unwrap();
        assert_eq!(one("patient/*.rs").accesses, [Read, Search].into());
        assert_eq!(one("user/Observation.r").accesses, [Read].into());
        assert_eq!(one("user/Observation.r").resource_type, "Observation");
        assert_eq!(one("system/*.cruds").accesses, Access::ALL.into());
        assert_eq!(one("patient/*.read").accesses, [Read, Search].into());
        assert_eq!(
            one("user/*.write").accesses,
            [Create, Update, Delete].into()
        );
        assert_eq!(one("user/*.*").accesses, Access::ALL.into());
        assert_eq!(one("system/*.*").context, Context::System);
        assert_eq!(
            one("user/Patient.cud").accesses,
            [Create, Update, Delete].into()
        );
        for none in [
            "openid",
            "fhirUser",
            "launch",
            "launch/patient",
            "offline_access",
        ] {
            assert_eq!(Scope::parse(none), Ok(None), "{none}");
        }
        for bad in [
            "user/*.rc",
            "user/*.rr",
            "user/*.x",
            "user/*.",
            "user/observation.r",
            "user/Observation",
            "user/Obs-ervation.r",
        ] {
            assert!(
                matches!(Scope::parse(bad), Err(ScopeError::Malformed(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Scope::parse("patient/Observation.rs?category=laboratory"),
            Err(ScopeError::Constrained(_))
        ));
        let (parsed, ignored) = Scopes::parse("openid  user/Observation.rs user/*.q");
        assert_eq!(parsed.scopes.len(), 1);
        assert_eq!(ignored.len(), 1);
    }

    fn read(t: &str, id: &str) -> Interaction {
        Interaction::Read {
            resource_type: t.into(),
            id: id.into(),
        }
    }
    fn search(t: &str) -> Interaction {
        Interaction::SearchType {
            resource_type: t.into(),
        }
    }
    fn create(t: &str) -> Interaction {
        Interaction::Create {
            resource_type: t.into(),
        }
    }
    fn delete(t: &str) -> Interaction {
        Interaction::Delete {
            resource_type: t.into(),
            id: "1".into(),
        }
    }

    /// One case of the policy table.
    struct Case {
        role: &'static str,
        own: bool,
        purpose: Option<&'static str>,
        scopes: &'static str,
        patient: Option<&'static str>,
        interaction: Interaction,
        query: Option<&'static str>,
        identity: bool,
        /// `Ok(None)`: unconfined; `Ok(Some(param))`: confined, with that search parameter
        /// added (`""` for none); `Err(kind)`: refused, "role", "scope" or "compartment".
        expect: Result<Option<&'static str>, &'static str>,
    }

    fn case(role: &'static str, scopes: &'static str, interaction: Interaction) -> Case {
        Case {
            role,
            own: true,
            purpose: None,
            scopes,
            patient: None,
            interaction,
            query: None,
            identity: false,
            expect: Ok(None),
        }
    }

    impl Case {
        fn own(mut self, own: bool) -> Case {
            self.own = own;
            self
        }
        fn purpose(mut self, p: &'static str) -> Case {
            self.purpose = Some(p);
            self
        }
        fn patient(mut self, p: &'static str) -> Case {
            self.patient = Some(p);
            self
        }
        fn query(mut self, q: &'static str) -> Case {
            self.query = Some(q);
            self
        }
        fn identity(mut self) -> Case {
            self.identity = true;
            self
        }
        fn expect(mut self, e: Result<Option<&'static str>, &'static str>) -> Case {
            self.expect = e;
            self
        }
    }

    #[test]
    fn the_policy_table() {
        let roles = policy::default_roles();
        let cases = vec![
            // Scopes per resource type and interaction, each form.
            case("clinician", "user/Observation.r", read("Observation", "1")),
            case("clinician", "user/Observation.r", read("Condition", "1")).expect(Err("scope")),
            case("clinician", "user/Observation.r", search("Observation")).expect(Err("scope")),
            case("clinician", "user/Observation.rs", search("Observation")),
            case("clinician", "user/*.read", search("Encounter")),
            case("clinician", "user/*.read", create("Encounter")).expect(Err("scope")),
            case(
                "clinician",
                "user/*.rs user/Observation.c",
                create("Observation"),
            ),
            case(
                "clinician",
                "user/*.rs user/Observation.c",
                create("Condition"),
            )
            .expect(Err("scope")),
            case("clinician", "user/*.write", delete("Observation")),
            case("clinician", "user/*.cu", delete("Observation")).expect(Err("scope")),
            case("clinician", "user/*.*", delete("Observation")),
            case("clinician", "system/*.cruds", delete("Observation")),
            // The role bounds what scopes allow: a researcher deletes nothing.
            case("researcher", "system/*.cruds", delete("Observation")).expect(Err("role")),
            case("researcher", "user/*.rs", search("Observation")),
            // Identity search: role, scope and purpose.
            case("clinician", "user/*.rs", search("Patient")).identity(),
            case("clinician", "user/*.rs", search("Patient"))
                .identity()
                .purpose("TREAT"),
            case("clinician", "user/*.rs", search("Patient"))
                .identity()
                .purpose("HRESCH")
                .expect(Err("narrowed")),
            case("researcher", "user/*.rs", search("Patient"))
                .identity()
                .expect(Err("role")),
            case("clinician", "user/*.r", search("Patient"))
                .identity()
                .expect(Err("scope")),
            // Another institution's clinician: identity searches still (the rows it may
            // see are pseudonymized), never identity merged back — see `effective_role`.
            case("clinician", "user/*.rs", search("Patient"))
                .identity()
                .own(false),
            // Patient context: confined to the compartment.
            case("clinician", "patient/*.rs", read("Patient", "p1"))
                .patient("p1")
                .expect(Ok(Some(""))),
            case("clinician", "patient/*.rs", read("Patient", "p2"))
                .patient("p1")
                .expect(Err("compartment")),
            case("clinician", "patient/*.rs", read("Observation", "o1"))
                .patient("p1")
                .expect(Ok(Some(""))),
            case("clinician", "patient/*.rs", read("Practitioner", "d1"))
                .patient("p1")
                .expect(Err("compartment")),
            case("clinician", "patient/*.rs", search("Observation"))
                .patient("p1")
                .query("code=1")
                .expect(Ok(Some("patient"))),
            case("clinician", "patient/*.rs", search("Patient"))
                .patient("p1")
                .expect(Ok(Some("_id"))),
            case("clinician", "patient/*.rs", search("Observation"))
                .patient("p1")
                .query("_include=Observation:performer")
                .expect(Err("compartment")),
            case("clinician", "patient/*.rs", Interaction::SearchSystem)
                .patient("p1")
                .query("code=1")
                .expect(Err("compartment")),
            case("clinician", "patient/*.rs", Interaction::SearchSystem)
                .patient("p1")
                .query("_getpages=abc&_getpagesoffset=20")
                // A page names no type: what it shows is checked in the answer (`unreadable`).
                .expect(Ok(None)),
            case("clinician", "patient/*.cruds", delete("Observation"))
                .patient("p1")
                .expect(Err("compartment")),
            case("clinician", "patient/Observation.c", create("Observation"))
                .patient("p1")
                .expect(Ok(Some(""))),
            // `patient/…` without a patient in context grants nothing.
            case("clinician", "patient/*.rs", read("Patient", "p1")).expect(Err("scope")),
            // A user scope beside the patient scope is not confined.
            case(
                "clinician",
                "patient/*.rs user/Observation.rs",
                search("Observation"),
            )
            .patient("p1"),
            // Server administration needs the role and every scope of the system.
            case(
                "admin",
                "user/*.*",
                Interaction::OperationSystem {
                    name: "expunge".into(),
                },
            )
            .expect(Err("narrowed")),
            case(
                "admin",
                "system/*.*",
                Interaction::OperationSystem {
                    name: "expunge".into(),
                },
            ),
            case("clinician", "user/*.rs", Interaction::Capabilities),
        ];
        for (i, c) in cases.iter().enumerate() {
            let role = roles.get(c.role).unwrap();
            let scopes = scopes(c.scopes);
            let subject = Subject {
                role_name: c.role,
                role,
                own_institution: c.own,
                purpose: c.purpose,
                scopes: &scopes,
                patient: c.patient,
            };
            let needs = Needs::of(&c.interaction, c.identity);
            let request = Request {
                interaction: &c.interaction,
                query: c.query,
                needs: &needs,
                entries: &[],
            };
            let got = decide(&subject, &request);
            let shown = match &got {
                Ok(Reach::Unconfined) => Ok(None),
                Ok(Reach::Patient { search, .. }) => Ok(Some(match search {
                    Some((k, _)) if k == "patient" => "patient",
                    Some((k, _)) if k == "_id" => "_id",
                    Some(_) => "other",
                    None => "",
                })),
                Err(Refusal::Role(_)) => Err("role"),
                Err(Refusal::Scope { .. }) => Err("scope"),
                Err(Refusal::Narrowed { .. }) => Err("narrowed"),
                Err(Refusal::Compartment(_)) => Err("compartment"),
            };
            assert_eq!(
                shown, c.expect,
                "case {i}: {} {:?} {:?}: {got:?}",
                c.role, c.scopes, c.interaction
            );
        }
    }

    #[test]
    fn identity_is_seen_by_own_staff_for_care_only() {
        let roles = policy::default_roles();
        let clinician = roles.get("clinician").unwrap();
        let all = scopes("user/*.cruds");
        let sees = |own, purpose| {
            effective_role(&Subject {
                role_name: "clinician",
                role: clinician,
                own_institution: own,
                purpose,
                scopes: &all,
                patient: None,
            })
            .may(Permission::SeeIdentity)
        };
        assert!(sees(true, None));
        assert!(sees(true, Some("ETREAT")));
        assert!(!sees(true, Some("HRESCH")));
        assert!(!sees(false, Some("TREAT")));
        let writes_only = scopes("user/*.cud");
        let role = effective_role(&Subject {
            role_name: "clinician",
            role: clinician,
            own_institution: true,
            purpose: None,
            scopes: &writes_only,
            patient: None,
        });
        assert!(!role.may(Permission::SeeIdentity) && role.may(Permission::Write));
    }

    #[test]
    fn consent_is_written_by_own_staff_with_a_writing_scope_on_consent() {
        let roles = policy::default_roles();
        let clinician = roles.get("clinician").unwrap();
        let may_consent = |scope: &str, own| {
            let scopes = scopes(scope);
            let subject = Subject {
                role_name: "clinician",
                role: clinician,
                own_institution: own,
                purpose: Some("TREAT"),
                scopes: &scopes,
                patient: None,
            };
            let interaction = create("Consent");
            let needs = Needs::of(&interaction, false);
            assert!(needs.permissions.contains(&Permission::Consent));
            decide(
                &subject,
                &Request {
                    interaction: &interaction,
                    query: None,
                    needs: &needs,
                    entries: &[],
                },
            )
            .is_ok()
        };
        assert!(may_consent("user/Consent.cu", true));
        assert!(may_consent("user/*.cruds", true));
        assert!(!may_consent("user/Consent.rs", true));
        assert!(!may_consent("user/Observation.c", true));
        assert!(
            !may_consent("user/Consent.cu", false),
            "another institution's staff"
        );
        // Writing another type needs no consent permission.
        assert!(!Needs::of(&create("Observation"), false)
            .permissions
            .contains(&Permission::Consent));
    }

    #[test]
    fn the_scope_refusal_names_the_scope() {
        let roles = policy::default_roles();
        let scopes = scopes("user/Observation.rs");
        let subject = Subject {
            role_name: "clinician",
            role: roles.get("clinician").unwrap(),
            own_institution: true,
            purpose: None,
            scopes: &scopes,
            patient: None,
        };
        let interaction = create("Observation");
        let needs = Needs::of(&interaction, false);
        let err = decide(
            &subject,
            &Request {
                interaction: &interaction,
                query: None,
                needs: &needs,
                entries: &[],
            },
        );
        // The role allows writing; the scopes do not write anything.
        assert!(matches!(err, Err(Refusal::Scope { .. })), "{err:?}");
        let scopes = Scopes::parse("user/Observation.rs user/Condition.c").0;
        let subject = Subject {
            scopes: &scopes,
            ..subject
        };
        let err = decide(
            &subject,
            &Request {
                interaction: &interaction,
                query: None,
                needs: &needs,
                entries: &[],
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("user/Observation.c"), "{err}");
    }

    #[test]
    fn batch_entries_need_their_scopes() {
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": "Observation?code=1"}},
            {"request": {"method": "POST", "url": "Condition"}},
            {"request": {"method": "DELETE", "url": "Observation/1"}}
        ]});
        assert_eq!(
            entry_accesses(&bundle),
            vec![
                (Some("Observation".to_owned()), Access::Search),
                (Some("Condition".to_owned()), Access::Create),
                (Some("Observation".to_owned()), Access::Delete),
            ]
        );
    }

    #[test]
    fn compartments_and_answers() {
        let patient = json!({"resourceType": "Patient", "id": "p1"});
        let mine = json!({"resourceType": "Observation", "subject": {"reference": "Patient/p1"}});
        let absolute = json!({"resourceType": "Observation",
            "subject": {"reference": "http://x/fhir/Patient/p1/_history/2"}});
        let theirs =
            json!({"resourceType": "Observation", "subject": {"reference": "Patient/p10"}});
        let allergy =
            json!({"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/p1"}});
        let doctor = json!({"resourceType": "Practitioner", "id": "d1"});
        for v in [&patient, &mine, &absolute, &allergy] {
            assert!(in_compartment(v, "p1"), "{v}");
        }
        for v in [&theirs, &doctor] {
            assert!(!in_compartment(v, "p1"), "{v}");
        }
        let bundle = |items: Vec<&Value>| {
            json!({"resourceType": "Bundle", "entry": items.into_iter()
                .map(|r| json!({"resource": r})).collect::<Vec<_>>()})
        };
        assert!(in_compartment(&bundle(vec![&patient, &mine]), "p1"));
        assert!(!in_compartment(&bundle(vec![&mine, &theirs]), "p1"));

        let confined = scopes("patient/*.rs");
        assert_eq!(
            unreadable(&bundle(vec![&patient, &mine]), &confined, Some("p1")),
            None
        );
        assert_eq!(
            unreadable(&bundle(vec![&mine, &theirs]), &confined, Some("p1")).as_deref(),
            Some("Observation")
        );
        let observations = scopes("user/Observation.rs");
        assert_eq!(unreadable(&theirs, &observations, None), None);
        assert_eq!(
            unreadable(&bundle(vec![&theirs, &doctor]), &observations, None).as_deref(),
            Some("Practitioner")
        );
    }
}
