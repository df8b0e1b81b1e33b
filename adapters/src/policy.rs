//! Least privilege: what each role may do ([`Role`]), what a request needs ([`Needs`]), and the
//! one check between them ([`authorize`]). Pure: the sidecar works out a request's needs from
//! its interaction, its criteria and (for a batch or transaction) its entries, and asks here.
//!
//! A role holds permissions and an allow-list of operations. Server-administration operations
//! (`$expunge`, `$reindex`, bulk `$export`, …) are callable only by a role that has the
//! `administer` permission *and* lists them (or lists `*`): a role cannot be given them by a
//! wildcard alone.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

use crate::profile::Profile;
use crate::route::{self, Interaction};
use crate::search::{self, SearchError};

/// One thing a role may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Permission {
    /// read and vread
    Read,
    /// searches on clinical parameters
    Search,
    /// searches naming identity (name, identifier, birth date, …), and identity criteria in
    /// conditional creates, updates and deletes and in batch and transaction entries
    IdentitySearch,
    /// create, update, patch
    Write,
    /// delete, conditional delete
    Delete,
    /// instance, type and system history
    History,
    /// identity is merged back into what this role reads (of its own institution's records)
    SeeIdentity,
    /// the access events on the ledger, and fingerprints in proofs and `$verify`
    Audit,
    /// server-administration operations, when also listed in `operations`
    Administer,
    /// creating, updating and deleting `Consent`s: grants and revocations on the consortium's
    /// chain of access to a person's records for another member
    Consent,
}

impl Permission {
    /// The name used in configuration and in refusals.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Search => "search",
            Permission::IdentitySearch => "identity-search",
            Permission::Write => "write",
            Permission::Delete => "delete",
            Permission::History => "history",
            Permission::SeeIdentity => "see-identity",
            Permission::Audit => "audit",
            Permission::Administer => "administer",
            Permission::Consent => "consent",
        }
    }
}

/// Operations that administer the server rather than read or write clinical data: they
/// remove history for good, rebuild indexes, or read or load everything at once, around the
/// sidecar's per-resource sealing and audit.
const ADMIN_OPERATIONS: &[&str] = &[
    "$erase",
    "$expunge",
    "$reindex",
    "$reindex-dryrun",
    "$mark-all-resources-for-reindexing",
    "$perform-reindexing-pass",
    "$export",
    "$export-poll-status",
    "$import",
    "$import-poll-status",
    "$trigger-subscription",
    "$upload-external-code-system",
    "$apply-codesystem-delta-add",
    "$apply-codesystem-delta-remove",
    "$hapi.fhir.replace-references",
    "$merge",
    "$binary-access-read",
    "$binary-access-write",
    "$get-resource-counts",
    "$meta-add",
    "$meta-delete",
];

/// Whether `operation` (with its `$`) administers the server.
pub fn is_admin_operation(operation: &str) -> bool {
    ADMIN_OPERATIONS.contains(&operation) || operation.starts_with("$partition-management")
}

/// What one role may do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub permissions: BTreeSet<Permission>,
    /// Operations this role may call, with their `$` (`$everything`), or `*` for every
    /// operation that does not administer the server.
    #[serde(default)]
    pub operations: BTreeSet<String>,
}

impl Role {
    pub fn may(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    /// Whether this role may call `operation` (with its `$`).
    pub fn may_call(&self, operation: &str) -> bool {
        if is_admin_operation(operation) {
            return self.may(Permission::Administer)
                && (self.operations.contains(operation) || self.operations.contains("*"));
        }
        self.operations.contains(operation) || self.operations.contains("*")
    }
}

/// Operations that read (terminology, a patient's record, summaries) and that clinicians use.
const CLINICAL_OPERATIONS: &[&str] = &[
    "$verify",
    "$locate",
    "$shared",
    "$everything",
    "$lastn",
    "$stats",
    "$summary",
    "$document",
    "$meta",
    "$diff",
    "$expand",
    "$lookup",
    "$validate-code",
    "$translate",
    "$subsumes",
];

/// The roles of the embedded default: a clinician reads, writes, sees identity and records
/// consent; a researcher reads and searches pseudonymized data only; an auditor reads the
/// ledger only; an admin may do everything, server administration included.
pub fn default_roles() -> BTreeMap<String, Role> {
    use Permission::*;
    let role = |permissions: &[Permission], operations: &[&str]| Role {
        permissions: permissions.iter().copied().collect(),
        operations: operations.iter().map(|o| (*o).to_owned()).collect(),
    };
    BTreeMap::from([
        (
            "clinician".to_owned(),
            role(
                &[
                    Read,
                    Search,
                    IdentitySearch,
                    Write,
                    Delete,
                    History,
                    SeeIdentity,
                    Consent,
                ],
                CLINICAL_OPERATIONS,
            ),
        ),
        (
            "researcher".to_owned(),
            role(
                &[Read, Search, History],
                &[
                    "$verify",
                    "$shared",
                    "$everything",
                    "$lastn",
                    "$stats",
                    "$expand",
                    "$lookup",
                    "$validate-code",
                    "$translate",
                    "$subsumes",
                ],
            ),
        ),
        ("auditor".to_owned(), role(&[Audit], &["$verify"])),
        (
            "admin".to_owned(),
            role(
                &[
                    Read,
                    Search,
                    IdentitySearch,
                    Write,
                    Delete,
                    History,
                    SeeIdentity,
                    Audit,
                    Administer,
                    Consent,
                ],
                &["*"],
            ),
        ),
    ])
}

/// What a request needs: permissions, and operations to call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    pub permissions: BTreeSet<Permission>,
    pub operations: BTreeSet<String>,
}

impl Needs {
    /// The needs of one interaction; `identity_criteria` when its query, form or conditions
    /// name identity.
    pub fn of(interaction: &Interaction, identity_criteria: bool) -> Needs {
        use Interaction as I;
        let mut needs = Needs::default();
        let permission = match interaction {
            I::Capabilities | I::Bundle => None,
            I::Read { .. } | I::VRead { .. } => Some(Permission::Read),
            I::SearchSystem | I::SearchType { .. } | I::SearchCompartment { .. } => {
                Some(Permission::Search)
            }
            I::HistorySystem | I::HistoryType { .. } | I::HistoryInstance { .. } => {
                Some(Permission::History)
            }
            I::Create { .. }
            | I::Update { .. }
            | I::Patch { .. }
            | I::ConditionalUpdate { .. }
            | I::ConditionalPatch { .. } => Some(Permission::Write),
            I::Delete { .. } | I::ConditionalDelete { .. } => Some(Permission::Delete),
            I::OperationSystem { name }
            | I::OperationType { name, .. }
            | I::OperationInstance { name, .. }
            | I::OperationVersion { name, .. } => {
                needs.operations.insert(format!("${name}"));
                match name.as_str() {
                    // Where else a person has records links them across members.
                    "locate" => Some(Permission::IdentitySearch),
                    // Another member's records of the person, read under its grant.
                    "shared" => Some(Permission::Read),
                    _ => None,
                }
            }
        };
        // Another member's records of whoever an identifier names: an identity search.
        if matches!(interaction, I::OperationType { name, .. } if name == "shared") {
            needs.permissions.insert(Permission::IdentitySearch);
        }
        let writes = matches!(
            permission,
            Some(Permission::Write) | Some(Permission::Delete)
        );
        if writes && interaction_type(interaction) == Some("Consent") {
            needs.permissions.insert(Permission::Consent);
        }
        needs.permissions.extend(permission);
        if identity_criteria {
            needs.permissions.insert(Permission::IdentitySearch);
        }
        needs
    }

    pub fn add(&mut self, other: Needs) {
        self.permissions.extend(other.permissions);
        self.operations.extend(other.operations);
    }
}

/// Why a principal may not make a request: the missing permission, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("the role '{role}' does not have the '{}' permission that this request needs", permission.name())]
    Permission {
        role: String,
        permission: Permission,
    },
    #[error("the role '{role}' may not call the operation {operation}")]
    Operation { role: String, operation: String },
}

/// The one check: whether `role` (named `role_name`) covers `needs`.
pub fn authorize(role_name: &str, role: &Role, needs: &Needs) -> Result<(), Denied> {
    if let Some(permission) = needs.permissions.iter().find(|p| !role.may(**p)) {
        return Err(Denied::Permission {
            role: role_name.to_owned(),
            permission: *permission,
        });
    }
    if let Some(operation) = needs.operations.iter().find(|o| !role.may_call(o)) {
        return Err(Denied::Operation {
            role: role_name.to_owned(),
            operation: operation.clone(),
        });
    }
    Ok(())
}

/// Why the needs of a batch or transaction cannot be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("Bundle entry {index}: {reason}")]
    Route { index: usize, reason: String },
    #[error("Bundle entry {index}: {source}")]
    Search { index: usize, source: SearchError },
}

/// The needs of every entry of a batch or transaction Bundle: each entry's method and URL as
/// if it were a request of its own, with its criteria (the URL's query, `ifNoneExist`).
pub fn bundle_needs(bundle: &Value, profile: &Profile) -> Result<Needs, EntryError> {
    let mut needs = Needs::default();
    let entries = bundle.get("entry").and_then(Value::as_array);
    for (index, entry) in entries.into_iter().flatten().enumerate() {
        let Some(request) = entry.get("request") else {
            continue;
        };
        let text = |key: &str| request.get(key).and_then(Value::as_str).unwrap_or("");
        let method =
            http::Method::from_bytes(text("method").as_bytes()).map_err(|_| EntryError::Route {
                index,
                reason: format!("'{}' is not an HTTP method", text("method")),
            })?;
        let url = text("url");
        let (path, query) = match url.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (url, None),
        };
        let interaction =
            route::route(&method, path, query.is_some()).map_err(|e| EntryError::Route {
                index,
                reason: e.to_string(),
            })?;
        let resource_type = interaction_type(&interaction);
        let mut identity = false;
        for criteria in query.into_iter().chain(
            request
                .get("ifNoneExist")
                .and_then(Value::as_str)
                .map(|c| c.strip_prefix('?').unwrap_or(c)),
        ) {
            identity |= search::names_identity(resource_type, criteria, profile)
                .map_err(|source| EntryError::Search { index, source })?;
        }
        let entry_needs = match interaction {
            // A Bundle inside a Bundle's entry would be a write of it.
            Interaction::Bundle => Needs::of(
                &Interaction::Create {
                    resource_type: "Bundle".to_owned(),
                },
                identity,
            ),
            other => Needs::of(&other, identity),
        };
        needs.add(entry_needs);
    }
    Ok(needs)
}

/// The resource type an interaction's criteria are about; `None` for system-level ones.
pub fn interaction_type(interaction: &Interaction) -> Option<&str> {
    use Interaction as I;
    match interaction {
        I::Create { resource_type }
        | I::SearchType { resource_type }
        | I::ConditionalUpdate { resource_type }
        | I::ConditionalPatch { resource_type }
        | I::ConditionalDelete { resource_type }
        | I::HistoryType { resource_type }
        | I::OperationType { resource_type, .. }
        | I::Read { resource_type, .. }
        | I::Update { resource_type, .. }
        | I::Patch { resource_type, .. }
        | I::Delete { resource_type, .. }
        | I::HistoryInstance { resource_type, .. }
        | I::VRead { resource_type, .. }
        | I::OperationInstance { resource_type, .. }
        | I::OperationVersion { resource_type, .. }
        | I::SearchCompartment { resource_type, .. } => {
            (resource_type != "*").then_some(resource_type.as_str())
        }
        I::Capabilities
        | I::Bundle
        | I::SearchSystem
        | I::HistorySystem
        | I::OperationSystem { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(name: &str) -> Role {
        default_roles().remove(name).unwrap()
    }

    fn needs(interaction: Interaction, identity: bool) -> Needs {
        Needs::of(&interaction, identity)
    }

    #[test]
    fn defaults_give_each_role_what_it_is_for() {
        let search = needs(
            Interaction::SearchType {
                resource_type: "Patient".into(),
            },
            false,
        );
        let identity_search = needs(
            Interaction::SearchType {
                resource_type: "Patient".into(),
            },
            true,
        );
        let delete = needs(
            Interaction::Delete {
                resource_type: "Patient".into(),
                id: "1".into(),
            },
            false,
        );
        let expunge = needs(
            Interaction::OperationSystem {
                name: "expunge".into(),
            },
            false,
        );
        let verify = needs(
            Interaction::OperationInstance {
                resource_type: "Patient".into(),
                id: "1".into(),
                name: "verify".into(),
            },
            false,
        );
        let researcher = role("researcher");
        assert!(authorize("researcher", &researcher, &search).is_ok());
        assert_eq!(
            authorize("researcher", &researcher, &identity_search),
            Err(Denied::Permission {
                role: "researcher".into(),
                permission: Permission::IdentitySearch
            })
        );
        assert!(authorize("researcher", &researcher, &delete).is_err());
        assert!(authorize("researcher", &researcher, &expunge).is_err());
        let clinician = role("clinician");
        assert!(authorize("clinician", &clinician, &identity_search).is_ok());
        assert!(authorize("clinician", &clinician, &expunge).is_err());
        let auditor = role("auditor");
        assert!(authorize("auditor", &auditor, &search).is_err());
        assert!(authorize("auditor", &auditor, &verify).is_ok());
        assert!(authorize("admin", &role("admin"), &expunge).is_ok());
        let wildcard = Role {
            permissions: [Permission::Read].into(),
            operations: ["*".to_owned()].into(),
        };
        assert!(!wildcard.may_call("$expunge") && wildcard.may_call("$everything"));
    }

    #[test]
    fn bundle_entries_need_what_they_would_alone() {
        let profile = Profile::default();
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": "Observation?code=1"}},
            {"request": {"method": "POST", "url": "Patient", "ifNoneExist": "family=smith"}},
            {"request": {"method": "DELETE", "url": "Observation/1"}}
        ]});
        let found = bundle_needs(&bundle, &profile).unwrap();
        use Permission::*;
        assert_eq!(
            found.permissions,
            [Search, IdentitySearch, Write, Delete].into()
        );
        let bad = json!({"entry": [{"request": {"method": "GET", "url": "Patient/a_b"}}]});
        assert!(matches!(
            bundle_needs(&bad, &profile),
            Err(EntryError::Route { index: 0, .. })
        ));
        let refused =
            json!({"entry": [{"request": {"method": "GET", "url": "Observation?_content=x"}}]});
        assert!(matches!(
            bundle_needs(&refused, &profile),
            Err(EntryError::Search { index: 0, .. })
        ));
    }
}
