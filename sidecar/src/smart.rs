//! SMART on FHIR access tokens, the sidecar's part: a bearer token from a trusted issuer
//! (`[[auth.smart.issuers]]`) is verified against the issuer's JWKS (a file, or a URL fetched
//! lazily, cached, and fetched again when a token names a key it lacks, at most once per
//! `jwks_refresh_secs`), and its claims become a [`Principal`] whose scopes, patient and purpose
//! [`fhirseal_adapters::smart::decide`] weighs on every request. `.well-known/smart-configuration`
//! is built here too.
//!
//! What is accepted: a JWS compact token signed RS256 or ES256 (never `none`, never HMAC),
//! whose `iss` is a configured issuer, whose `aud` names that issuer's configured audience,
//! whose `exp` has not passed and whose `nbf` has (within `leeway_secs`) at the time passed in.
//! No token, nor any part of one, is written to a log: refusals say why only.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fhirseal_adapters::auth::{Principal, TokenGrant};
use fhirseal_adapters::policy::{Permission, Role};
use fhirseal_adapters::smart::{self, Scopes, Subject};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use crate::config::{IssuerConfig, SmartConfig};

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// How long a JWKS fetch may take.
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest name (the `sub` claim) recorded on the ledger.
const MAX_NAME: usize = 256;

/// Why a bearer token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the access token is not a signed JWT (JWS compact serialization)")]
    Malformed,
    #[error("the access token's algorithm is not accepted (RS256 or ES256 only)")]
    Algorithm,
    #[error("the access token's issuer is not trusted")]
    Issuer,
    #[error("the access token is signed by a key its issuer does not publish")]
    UnknownKey,
    #[error("the access token's signature does not verify")]
    Signature,
    #[error("the access token is not for this server (its audience)")]
    Audience,
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is not valid yet")]
    NotYetValid,
    #[error("the access token's {0} claim is missing or malformed")]
    Claim(String),
    #[error("the access token names a role that no [auth.roles] entry defines")]
    UnknownRole,
    #[error("the signing keys of the token's issuer cannot be had: {0}")]
    Jwks(String),
}

/// Why the SMART configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SmartSetupError {
    #[error("JWKS file {path}: {reason}")]
    JwksFile { path: String, reason: String },
    #[error("JWKS client: {0}")]
    Client(String),
}

/// One signing key of an issuer.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The signing keys of one issuer, as its JWKS lists them (RSA and P-256 keys meant for
/// signatures; others are skipped).
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (&k.kid, k.alg)))
            .finish()
    }
}

impl KeySet {
    /// The keys of a JWKS document (`{"keys": [...]}`).
    pub fn from_jwks(bytes: &[u8]) -> Result<KeySet, String> {
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let items = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("no \"keys\" array")?;
        let mut keys = Vec::new();
        for item in items {
            let Ok(jwk) = serde_json::from_value::<Jwk>(item.clone()) else {
                continue;
            };
            if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                _ => continue,
            };
            if let Some(stated) = jwk.common.key_algorithm {
                if stated.to_string() != format!("{alg:?}") {
                    continue;
                }
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            });
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What a token says of itself before it is verified: enough to pick the issuer and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub issuer: String,
}

/// Whether `bearer` has the shape of a JWT (three base64url parts), not of an API key.
pub fn looks_like_jwt(bearer: &str) -> bool {
    let parts: Vec<&str> = bearer.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && bearer
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The header and issuer of `token`, unverified. Only RS256 and ES256 pass (an `alg` of
/// `none` or `HS256` is refused here, before any key is looked at).
pub fn inspect(token: &str) -> Result<Unverified, TokenError> {
    if !looks_like_jwt(token) {
        return Err(TokenError::Malformed);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|e| {
        if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::Json(_)) {
            // An algorithm jsonwebtoken has no name for (`none`) fails to deserialize.
            TokenError::Algorithm
        } else {
            TokenError::Malformed
        }
    })?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
        return Err(TokenError::Algorithm);
    }
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|_| TokenError::Malformed)?;
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| TokenError::Claim("iss".to_owned()))?
        .to_owned();
    Ok(Unverified {
        alg: header.alg,
        kid: header.kid,
        issuer,
    })
}

/// Verifies `token` (inspected as `unverified`) with `keys`, for `audience`, at `now_secs`
/// with `leeway` seconds of skew: its claims. Pure.
pub fn verify(
    token: &str,
    unverified: &Unverified,
    keys: &KeySet,
    audience: &str,
    now_secs: u64,
    leeway: u64,
) -> Result<Value, TokenError> {
    use jsonwebtoken::errors::ErrorKind as K;
    let mut validation = Validation::new(unverified.alg);
    validation.set_issuer(&[&unverified.issuer]);
    validation.set_audience(&[audience]);
    // `exp` and `nbf` are checked below against the time passed in, not the system clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_required_spec_claims(&["iss", "aud", "exp"]);
    validation.leeway = 0;
    let candidates = keys.keys.iter().filter(|k| {
        k.alg == unverified.alg
            && match &unverified.kid {
                Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
                None => true,
            }
    });
    let mut tried = false;
    let mut claims = None;
    for key in candidates {
        tried = true;
        match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
            Ok(data) => {
                claims = Some(data.claims);
                break;
            }
            Err(e) => match e.kind() {
                K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) => continue,
                K::InvalidAudience => return Err(TokenError::Audience),
                K::InvalidIssuer => return Err(TokenError::Issuer),
                K::InvalidAlgorithm => return Err(TokenError::Algorithm),
                K::MissingRequiredClaim(claim) | K::InvalidClaimFormat(claim) => {
                    return Err(TokenError::Claim(claim.clone()))
                }
                _ => return Err(TokenError::Malformed),
            },
        }
    }
    let Some(claims) = claims else {
        return Err(if tried {
            TokenError::Signature
        } else {
            TokenError::UnknownKey
        });
    };
    let time = |name: &str| -> Result<Option<u64>, TokenError> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .map(Some)
                .ok_or_else(|| TokenError::Claim(name.to_owned())),
        }
    };
    let exp = time("exp")?.ok_or_else(|| TokenError::Claim("exp".to_owned()))?;
    if exp.saturating_add(leeway) <= now_secs {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = time("nbf")? {
        if nbf > now_secs.saturating_add(leeway) {
            return Err(TokenError::NotYetValid);
        }
    }
    Ok(claims)
}

/// The principal of verified `claims` from `issuer`: its role from the role table, its
/// institution, purpose of use, patient in context and scopes, and what it may do as a role
/// ([`smart::effective_role`]).
pub fn principal(
    claims: &Value,
    issuer: &IssuerConfig,
    roles: &BTreeMap<String, Role>,
    own_institution: &str,
) -> Result<Principal, TokenError> {
    let text = |name: &str| -> Result<Option<&str>, TokenError> {
        match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(TokenError::Claim(name.to_owned())),
        }
    };
    let required = |name: &str| text(name)?.ok_or_else(|| TokenError::Claim(name.to_owned()));
    let role_name = required(&issuer.role_claim)?;
    let role = roles.get(role_name).ok_or(TokenError::UnknownRole)?;
    let institution = required(&issuer.institution_claim)?;
    let purpose = text(&issuer.purpose_claim)?;
    if let Some(purpose) = purpose {
        let code = (1..=64).contains(&purpose.len())
            && purpose
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !code {
            return Err(TokenError::Claim(issuer.purpose_claim.clone()));
        }
    }
    let patient = text("patient")?;
    if let Some(id) = patient {
        let fhir_id = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
        if !fhir_id {
            return Err(TokenError::Claim("patient".to_owned()));
        }
    }
    let scope_text = match claims.get("scope") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        // Some servers send `scope` (or `scp`) as an array.
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        Some(_) => return Err(TokenError::Claim("scope".to_owned())),
    };
    let (scopes, ignored) = Scopes::parse(&scope_text);
    for why in &ignored {
        tracing::debug!(%why, "a scope of the token grants nothing");
    }
    let name = text("sub")?
        .or(text("client_id")?)
        .ok_or_else(|| TokenError::Claim("sub".to_owned()))?;
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(TokenError::Claim("sub".to_owned()));
    }
    let own = institution == own_institution;
    let rights = smart::effective_role(&Subject {
        role_name,
        role,
        own_institution: own,
        purpose,
        scopes: &scopes,
        patient,
    });
    Ok(Principal {
        institution: institution.to_owned(),
        role: role_name.to_owned(),
        name: name.to_owned(),
        sees_identity: rights.may(Permission::SeeIdentity),
        audits: rights.may(Permission::Audit),
        rights,
        token: Some(TokenGrant {
            scopes,
            patient: patient.map(str::to_owned),
            purpose: purpose.map(str::to_owned),
            own_institution: own,
        }),
    })
}

/// One trusted issuer and its cached keys.
struct Trusted {
    config: IssuerConfig,
    keys: RwLock<Arc<KeySet>>,
    /// When its JWKS URL was last fetched; fetches wait on one another.
    fetched: tokio::sync::Mutex<Option<Instant>>,
}

type JwksClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The issuers the proxy trusts, with their keys.
pub struct SmartAuth {
    issuers: Vec<Trusted>,
    leeway: u64,
    refresh: Duration,
    roles: BTreeMap<String, Role>,
    own_institution: String,
    client: Option<JwksClient>,
    /// Fetches made, for tests of the refresh bound.
    fetches: AtomicU64,
}

impl std::fmt::Debug for SmartAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmartAuth")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|i| i.config.issuer.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl SmartAuth {
    /// The issuers of `config`, their JWKS files read now (URLs are fetched on first use);
    /// `None` when no issuer is configured.
    pub fn new(
        config: &SmartConfig,
        roles: BTreeMap<String, Role>,
        own_institution: &str,
    ) -> Result<Option<SmartAuth>, SmartSetupError> {
        if config.issuers.is_empty() {
            return Ok(None);
        }
        let mut issuers = Vec::new();
        let mut needs_client = false;
        for issuer in &config.issuers {
            let keys = match &issuer.jwks_file {
                Some(path) => {
                    let err = |reason: String| SmartSetupError::JwksFile {
                        path: path.display().to_string(),
                        reason,
                    };
                    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
                    let keys = KeySet::from_jwks(&bytes).map_err(err)?;
                    if keys.is_empty() {
                        return Err(err("no RSA or P-256 signing key".to_owned()));
                    }
                    keys
                }
                None => {
                    needs_client = true;
                    KeySet::default()
                }
            };
            issuers.push(Trusted {
                config: issuer.clone(),
                keys: RwLock::new(Arc::new(keys)),
                fetched: tokio::sync::Mutex::new(None),
            });
        }
        let client = if needs_client {
            let tls = crate::tls::upstream_client_config(None, None)
                .map_err(|e| SmartSetupError::Client(e.to_string()))?;
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_connect_timeout(Some(JWKS_TIMEOUT));
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            Some(Client::builder(TokioExecutor::new()).build(connector))
        } else {
            None
        };
        Ok(Some(SmartAuth {
            issuers,
            leeway: config.leeway_secs,
            refresh: Duration::from_secs(config.jwks_refresh_secs),
            roles,
            own_institution: own_institution.to_owned(),
            client,
            fetches: AtomicU64::new(0),
        }))
    }

    /// The principal of an access token, verified at `now_ms`.
    pub async fn authenticate(&self, token: &str, now_ms: u64) -> Result<Principal, TokenError> {
        let unverified = inspect(token)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == unverified.issuer)
            .ok_or(TokenError::Issuer)?;
        // Against the issuer's keys as held when called: again after a refresh of its JWKS.
        let attempt = || {
            verify(
                token,
                &unverified,
                &issuer.keys(),
                issuer.config.audience.as_str(),
                now_ms / 1000,
                self.leeway,
            )
        };
        let claims = match attempt() {
            Err(TokenError::UnknownKey) if issuer.config.jwks_url.is_some() => {
                if self.refresh(issuer).await? {
                    attempt()
                } else {
                    Err(TokenError::UnknownKey)
                }
            }
            other => other,
        }?;
        principal(&claims, &issuer.config, &self.roles, &self.own_institution)
    }

    /// Fetches `issuer`'s JWKS again unless it was fetched within the refresh bound; whether
    /// it was.
    async fn refresh(&self, issuer: &Trusted) -> Result<bool, TokenError> {
        let (Some(url), Some(client)) = (&issuer.config.jwks_url, &self.client) else {
            return Ok(false);
        };
        let mut fetched = issuer.fetched.lock().await;
        if fetched.is_some_and(|at| at.elapsed() < self.refresh) {
            return Ok(false);
        }
        *fetched = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let keys = fetch_jwks(client, url).await.map_err(|reason| {
            tracing::warn!(issuer = %issuer.config.issuer, %reason, "the issuer's JWKS could not be fetched");
            TokenError::Jwks(reason)
        })?;
        tracing::info!(issuer = %issuer.config.issuer, keys = keys.len(), "fetched the issuer's JWKS");
        if let Ok(mut slot) = issuer.keys.write() {
            *slot = Arc::new(keys);
        }
        Ok(true)
    }

    /// How many JWKS fetches were made.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// `.well-known/smart-configuration` for the first configured issuer.
    pub fn configuration(&self) -> Value {
        let Some(first) = self.issuers.first() else {
            return json!({});
        };
        let issuer = &first.config;
        let base = issuer.issuer.trim_end_matches('/');
        let mut doc = json!({
            "issuer": issuer.issuer,
            "authorization_endpoint": issuer
                .authorization_endpoint
                .clone()
                .unwrap_or_else(|| format!("{base}/authorize")),
            "token_endpoint": issuer
                .token_endpoint
                .clone()
                .unwrap_or_else(|| format!("{base}/token")),
            "grant_types_supported": ["authorization_code", "client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": [
                "openid", "fhirUser", "launch", "launch/patient", "offline_access",
                "patient/*.rs", "user/*.rs", "user/*.cruds", "system/*.rs", "system/*.cruds",
                "patient/*.read", "user/*.read", "user/*.write", "user/*.*"
            ],
            "capabilities": [
                "launch-standalone", "client-public", "client-confidential-symmetric",
                "client-confidential-asymmetric", "context-standalone-patient",
                "permission-patient", "permission-user", "permission-v1", "permission-v2"
            ],
        });
        if let (Some(url), Some(map)) = (&issuer.jwks_url, doc.as_object_mut()) {
            map.insert("jwks_uri".to_owned(), Value::from(url.as_str()));
        }
        doc
    }
}

impl Trusted {
    fn keys(&self) -> Arc<KeySet> {
        self.keys.read().map(|k| Arc::clone(&k)).unwrap_or_default()
    }
}

/// GETs a JWKS, under a time and size bound.
async fn fetch_jwks(client: &JwksClient, url: &str) -> Result<KeySet, String> {
    let request = http::Request::get(url)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(JWKS_TIMEOUT, client.request(request))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let body = tokio::time::timeout(
        JWKS_TIMEOUT,
        Limited::new(response.into_body(), MAX_JWKS_BYTES).collect(),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|e| e.to_string())?
    .to_bytes();
    KeySet::from_jwks(&body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const ISS: &str = "https://auth.example.org";
    const AUD: &str = "https://seal.example.org/fhir";
    const NOW: u64 = 1_800_000_000;

    /// A P-256 key pair: the signing key and its JWK.
    fn ec_key(kid: &str) -> (EncodingKey, Value) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EncodingKey::from_ec_der(&pair.serialize_der());
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        (key, serde_json::to_value(jwk).unwrap())
    }

    fn rsa_key(kid: &str) -> (EncodingKey, Value) {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let private = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
        let key = EncodingKey::from_rsa_der(private.to_pkcs1_der().unwrap().as_bytes());
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        (key, serde_json::to_value(jwk).unwrap())
    }

    fn sign(key: &EncodingKey, alg: Algorithm, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn claims() -> Value {
        json!({
            "iss": ISS, "aud": AUD, "sub": "dr-who", "exp": NOW + 300, "nbf": NOW - 10,
            "scope": "openid user/Observation.rs patient/*.read",
            "fhirseal_role": "clinician", "organization": "local", "purpose_of_use": "TREAT",
            "patient": "p1"
        })
    }

    fn issuer() -> IssuerConfig {
        IssuerConfig {
            issuer: ISS.to_owned(),
            audience: AUD.to_owned(),
            jwks_file: None,
            jwks_url: None,
            role_claim: "fhirseal_role".to_owned(),
            institution_claim: "organization".to_owned(),
            purpose_claim: "purpose_of_use".to_owned(),
            authorization_endpoint: None,
            token_endpoint: None,
        }
    }

    fn check(token: &str, keys: &KeySet, now: u64) -> Result<Value, TokenError> {
        let unverified = inspect(token)?;
        verify(token, &unverified, keys, AUD, now, 30)
    }

    #[test]
    fn tokens_are_verified_at_the_time_passed_in() {
        let (ec, ec_jwk) = ec_key("ec-1");
        let (rs, rs_jwk) = rsa_key("rs-1");
        let jwks = json!({"keys": [ec_jwk, rs_jwk, {"kty": "oct", "k": "c2VjcmV0"}]});
        let keys = KeySet::from_jwks(jwks.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 2);

        let es256 = sign(&ec, Algorithm::ES256, "ec-1", &claims());
        let rs256 = sign(&rs, Algorithm::RS256, "rs-1", &claims());
        assert_eq!(check(&es256, &keys, NOW).unwrap()["sub"], "dr-who");
        assert_eq!(check(&rs256, &keys, NOW).unwrap()["sub"], "dr-who");
        // Within the leeway, and past it.
        assert!(check(&es256, &keys, NOW + 320).is_ok());
        assert_eq!(check(&es256, &keys, NOW + 331), Err(TokenError::Expired));
        assert_eq!(
            check(&es256, &keys, NOW - 100),
            Err(TokenError::NotYetValid)
        );

        let mut other = claims();
        other["aud"] = json!("https://elsewhere.example.org/fhir");
        let token = sign(&ec, Algorithm::ES256, "ec-1", &other);
        assert_eq!(check(&token, &keys, NOW), Err(TokenError::Audience));
        let mut other = claims();
        other.as_object_mut().unwrap().remove("exp");
        let token = sign(&ec, Algorithm::ES256, "ec-1", &other);
        assert_eq!(
            check(&token, &keys, NOW),
            Err(TokenError::Claim("exp".to_owned()))
        );

        // Another key under a published kid; a kid not published.
        let (stranger, _) = ec_key("ec-1");
        let forged = sign(&stranger, Algorithm::ES256, "ec-1", &claims());
        assert_eq!(check(&forged, &keys, NOW), Err(TokenError::Signature));
        let unknown = sign(&stranger, Algorithm::ES256, "ec-9", &claims());
        assert_eq!(check(&unknown, &keys, NOW), Err(TokenError::UnknownKey));

        // `alg: none` and HS256 are refused before any key is looked at.
        use base64::Engine as _;
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&claims())
        );
        assert_eq!(inspect(&none), Err(TokenError::Algorithm));
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"secret").unwrap(),
        )
        .unwrap();
        assert_eq!(inspect(&hs), Err(TokenError::Algorithm));
        assert_eq!(
            inspect("k-clinician-0123456789"),
            Err(TokenError::Malformed)
        );
        // A token's header naming RS256 over an EC key does not verify with it.
        let mut swapped = Header::new(Algorithm::ES256);
        swapped.kid = Some("rs-1".to_owned());
        let token = jsonwebtoken::encode(&swapped, &claims(), &ec).unwrap();
        assert_eq!(check(&token, &keys, NOW), Err(TokenError::UnknownKey));
    }

    #[test]
    fn claims_make_the_principal() {
        let roles = fhirseal_adapters::policy::default_roles();
        let p = principal(&claims(), &issuer(), &roles, "local").unwrap();
        assert_eq!((p.name.as_str(), p.role.as_str()), ("dr-who", "clinician"));
        assert!(p.sees_identity);
        let grant = p.token.unwrap();
        assert_eq!(grant.patient.as_deref(), Some("p1"));
        assert_eq!(grant.purpose.as_deref(), Some("TREAT"));
        // Research: no identity; another institution: no identity.
        let mut research = claims();
        research["purpose_of_use"] = json!("HRESCH");
        assert!(
            !principal(&research, &issuer(), &roles, "local")
                .unwrap()
                .sees_identity
        );
        let p = principal(&claims(), &issuer(), &roles, "elsewhere").unwrap();
        assert!(!p.sees_identity && !p.audits);
        let mut janitor = claims();
        janitor["fhirseal_role"] = json!("janitor");
        assert_eq!(
            principal(&janitor, &issuer(), &roles, "local"),
            Err(TokenError::UnknownRole)
        );
        let mut bad = claims();
        bad["patient"] = json!("p1&_id=p2");
        assert_eq!(
            principal(&bad, &issuer(), &roles, "local"),
            Err(TokenError::Claim("patient".to_owned()))
        );
        let mut none = claims();
        none.as_object_mut().unwrap().remove("organization");
        assert!(principal(&none, &issuer(), &roles, "local").is_err());
    }
}
