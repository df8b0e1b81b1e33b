//! Auth adapters: who is calling. An API-key table, and the principal of a request (by API key,
//! or by a SMART on FHIR access token the sidecar verified, [`TokenGrant`]); the principal says
//! which institution and role the caller acts for, and what that role may do
//! ([`crate::policy`], and [`crate::smart`] for a token's scopes and patient).

use std::collections::{BTreeMap, HashMap};

use http::header::{HeaderMap, AUTHORIZATION};
use sha2::{Digest, Sha256};

use crate::policy::{Permission, Role};

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub institution: String,
    pub role: String,
    /// A name for logs and audit, never the credential.
    pub name: String,
    /// What the role may do.
    pub rights: Role,
    /// Whether identity is merged back into what this caller reads: its role may see identity
    /// and it belongs to the institution whose vault this is.
    pub sees_identity: bool,
    /// Whether this caller reads the audit trail (access events, fingerprints): its role may,
    /// and it belongs to this institution.
    pub audits: bool,
    /// What an access token grants, when the caller presented one (`None` for an API key).
    pub token: Option<TokenGrant>,
}

/// The attributes of a verified SMART on FHIR access token, weighed by
/// [`crate::smart::decide`] on every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub scopes: crate::smart::Scopes,
    /// The patient in context (`patient` claim): `patient/…` scopes reach its compartment only.
    pub patient: Option<String>,
    /// The purpose of use claimed (an HL7 v3 PurposeOfUse code).
    pub purpose: Option<String>,
    /// Whether the bearer belongs to this node's institution.
    pub own_institution: bool,
}

/// Why a request has no principal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no credentials: send an API key as 'X-Api-Key: <key>' or 'Authorization: Bearer <key>'"
    )]
    Missing,
    #[error("the API key is not known")]
    Unknown,
}

/// Why an API-key table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the API key named '{name}' has the role '{role}', which no [auth.roles] entry defines")]
pub struct UnknownRole {
    pub name: String,
    pub role: String,
}

/// API keys, held as SHA-256 digests so that a lookup does not compare secrets byte by byte.
#[derive(Clone, Default)]
pub struct ApiKeyTable {
    keys: HashMap<[u8; 32], Principal>,
}

impl std::fmt::Debug for ApiKeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyTable")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl ApiKeyTable {
    /// A table of `(key, institution, role, name)`, each role taken from `roles`; a principal
    /// sees identity (and reads the audit trail) only when its role may and it belongs to
    /// `own_institution`, whose vault and ledger these are.
    pub fn new<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str, &'a str, Option<&'a str>)>,
        roles: &BTreeMap<String, Role>,
        own_institution: &str,
    ) -> Result<ApiKeyTable, UnknownRole> {
        let keys = entries
            .into_iter()
            .map(|(key, institution, role, name)| {
                let name = name.unwrap_or(role).to_owned();
                let mut rights = roles.get(role).cloned().ok_or_else(|| UnknownRole {
                    name: name.clone(),
                    role: role.to_owned(),
                })?;
                let own = institution == own_institution;
                if !own {
                    // Another institution's staff see neither this institution's identities
                    // nor its audit trail, whatever their role.
                    rights.permissions.remove(&Permission::SeeIdentity);
                    rights.permissions.remove(&Permission::Audit);
                }
                let principal = Principal {
                    institution: institution.to_owned(),
                    role: role.to_owned(),
                    name,
                    sees_identity: rights.may(Permission::SeeIdentity),
                    audits: rights.may(Permission::Audit),
                    rights,
                    token: None,
                };
                Ok((digest(key), principal))
            })
            .collect::<Result<_, UnknownRole>>()?;
        Ok(ApiKeyTable { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The principal of a request's credentials.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let key = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                headers
                    .get(AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        v.strip_prefix("Bearer ")
                            .or_else(|| v.strip_prefix("bearer "))
                    })
            })
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(AuthError::Missing)?;
        self.keys
            .get(&digest(key))
            .cloned()
            .ok_or(AuthError::Unknown)
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn keys_map_to_principals() {
        let roles = crate::policy::default_roles();
        let table = ApiKeyTable::new(
            [
                ("k-clinician-0123456789", "local", "clinician", None),
                (
                    "k-research-0123456789",
                    "local",
                    "researcher",
                    Some("study"),
                ),
                ("k-other-01234567890", "elsewhere", "clinician", None),
            ],
            &roles,
            "local",
        )
        .unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(table.authenticate(&headers), Err(AuthError::Missing));
        headers.insert("x-api-key", HeaderValue::from_static("nope"));
        assert_eq!(table.authenticate(&headers), Err(AuthError::Unknown));
        headers.insert(
            "x-api-key",
            HeaderValue::from_static("k-clinician-0123456789"),
        );
        assert!(table.authenticate(&headers).unwrap().sees_identity);
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer k-research-0123456789"),
        );
        let p = table.authenticate(&headers).unwrap();
        assert!(!p.sees_identity);
        assert_eq!(p.name, "study");
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer k-other-01234567890"),
        );
        assert!(!table.authenticate(&headers).unwrap().sees_identity);
        let unknown = ApiKeyTable::new(
            [("k-x-012345678901234", "local", "janitor", None)],
            &roles,
            "local",
        );
        assert_eq!(unknown.unwrap_err().role, "janitor");
    }
}
