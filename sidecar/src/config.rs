//! Typed configuration: defaults for the embedded single node, then a TOML file, then the
//! environment, then CLI flags, then [`Config::validate`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fhirseal_adapters::policy::{self, Role};
use http::Uri;
use serde::Deserialize;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {name}: {reason}")]
    Env { name: &'static str, reason: String },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// The whole configuration of one fhirseal node.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub log: LogConfig,
    pub seal: SealConfig,
    pub auth: AuthConfig,
    pub ledger: LedgerConfig,
    pub audit: AuditConfig,
    pub consortium: ConsortiumConfig,
    pub admin: AdminConfig,
    /// Where the node keeps its keys, vault, ledger and governance state.
    pub data_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            upstream: UpstreamConfig::default(),
            log: LogConfig::default(),
            seal: SealConfig::default(),
            auth: AuthConfig::default(),
            ledger: LedgerConfig::default(),
            audit: AuditConfig::default(),
            consortium: ConsortiumConfig::default(),
            admin: AdminConfig::default(),
            data_dir: PathBuf::from("./fhirseal-data"),
        }
    }
}

/// The admin listener: `/metrics` (Prometheus text), `/healthz` and `/readyz`, on a port of
/// their own, off the FHIR base and without API keys (bind it where only operators reach it).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where it listens; unset: no admin listener.
    pub listen: Option<SocketAddr>,
    /// `/readyz` answers 503 when what waits in the outbox has waited this long.
    pub max_anchor_lag_secs: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: None,
            max_anchor_lag_secs: 60,
        }
    }
}

/// The listener clients talk to.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The path under which the FHIR API is served, e.g. `/fhir`.
    pub base_path: String,
    /// The base URL clients use to reach the sidecar, when it sits behind another proxy. When
    /// unset it is built from each request's `Host` and the listener's scheme.
    pub public_base: Option<String>,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: u64,
    /// Closes client connections idle for this long, in seconds (HTTP/1 header read timeout).
    pub header_read_timeout_secs: u64,
    /// A client has this long, in seconds, to send a whole request body the sidecar reads
    /// (writes, `_search` forms); then 408.
    pub body_read_timeout_secs: u64,
    /// Most client connections open at once; more wait in the listen queue.
    pub max_connections: usize,
    /// Most requests handled at once; more are answered 503 at once.
    pub max_concurrent_requests: usize,
    /// Most HTTP/2 streams one client connection may have open.
    pub max_http2_streams: u32,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Largest upstream answer the sidecar reads whole to merge identity back into it, in
    /// bytes; a larger one is 502 (ask for smaller pages with `_count`).
    pub max_reidentify_bytes: u64,
    /// TLS on the listener (rustls); plain HTTP when absent.
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            base_path: "/fhir".to_owned(),
            public_base: None,
            max_body_bytes: 16 * 1024 * 1024,
            header_read_timeout_secs: 30,
            body_read_timeout_secs: 60,
            max_connections: 1024,
            max_concurrent_requests: 256,
            max_http2_streams: 100,
            max_header_bytes: 64 * 1024,
            max_reidentify_bytes: 8 * 1024 * 1024,
            tls: None,
        }
    }
}

impl ServerConfig {
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.body_read_timeout_secs)
    }
}

/// PEM files for the listener's certificate chain and private key.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The FHIR server behind the sidecar.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The upstream's FHIR base URL.
    pub url: String,
    /// Time to open a TCP connection to the upstream, in milliseconds (then 502).
    pub connect_timeout_ms: u64,
    /// Time for the upstream to answer with a status line, in milliseconds (then 504).
    pub timeout_ms: u64,
    /// How long an idle pooled connection is kept, in seconds.
    pub pool_idle_timeout_secs: u64,
    /// Most idle connections kept in the pool.
    pub pool_max_idle: usize,
    /// Whether the upstream builds its links from `X-Forwarded-*` headers (HAPI does). When it
    /// does not, the sidecar buffers FHIR response bodies and rewrites the links itself.
    pub honours_forwarded_headers: bool,
    /// Longest query string sent in a URL, in bytes. An identity search whose ids would make
    /// it longer is paged by the sidecar (one page of ids to the upstream) when identity alone
    /// chooses its answer; any other longer search is sent as `POST _search` with the query in
    /// the body.
    pub max_query_bytes: usize,
    /// PEM file of certificate authorities trusted for an `https` upstream, besides the
    /// platform's.
    pub ca_file: Option<PathBuf>,
    /// The sidecar's own credential for the upstream (client credentials never go upstream).
    pub auth: UpstreamAuthConfig,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: "http://localhost:8080/fhir".to_owned(),
            connect_timeout_ms: 2_000,
            timeout_ms: 60_000,
            pool_idle_timeout_secs: 90,
            pool_max_idle: 64,
            honours_forwarded_headers: true,
            max_query_bytes: 4096,
            ca_file: None,
            auth: UpstreamAuthConfig::default(),
        }
    }
}

/// How the sidecar authenticates to the upstream: none (the default), a static bearer token, a
/// user and password (HTTP basic), and/or a TLS client certificate. Secrets are read from
/// files, so that they stay out of the configuration and the environment.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamAuthConfig {
    /// A file holding the bearer token (`Authorization: Bearer <token>`).
    pub bearer_token_file: Option<PathBuf>,
    /// The user of HTTP basic authentication; its password is in `basic_password_file`.
    pub basic_user: Option<String>,
    pub basic_password_file: Option<PathBuf>,
    /// PEM certificate chain and key presented to an `https` upstream.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl UpstreamConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Logging.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log collectors.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `fhirseal_sidecar=debug,info`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            // openraft reports every election and vote at info.
            filter: "info,openraft=warn".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Sealing: what is identity, how it is keyed, encrypted and made durable.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SealConfig {
    /// This node's institution, named in anchors and audit.
    pub institution: String,
    /// A TOML profile file adding to or removing from the default split profile.
    pub profile: Option<PathBuf>,
    /// Identifier systems that identify a person across institutions, in order of preference;
    /// a person without one is keyed by normalized name and birth date.
    pub identity_systems: Vec<String>,
    /// Size of the institution's RSA key made on first start.
    pub rsa_bits: usize,
    /// Where the keys live; `data_dir/keys` when unset.
    pub keys_dir: Option<PathBuf>,
    /// Records sealed under one RSA-wrapped epoch key before a new one is made.
    pub epoch_uses: u32,
    /// Unwrapped epoch keys kept in memory for reads.
    pub key_cache: usize,
    /// `group` (concurrent writes share a flush) or `every-write`; either way a write is on
    /// disk before the client is acknowledged.
    pub durability: DurabilityMode,
    /// What `Patient/[id]/$erase` does with the upstream's pseudonymized `Patient`: `keep` it
    /// (its clinical record stays whole, without identity) or `delete` it.
    pub erase_upstream: EraseUpstream,
}

/// What an erasure does with the upstream's pseudonymized copy of the patient.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EraseUpstream {
    #[default]
    Keep,
    Delete,
}

impl Default for SealConfig {
    fn default() -> Self {
        SealConfig {
            institution: "local".to_owned(),
            profile: None,
            identity_systems: vec!["http://hl7.org/fhir/sid/us-ssn".to_owned()],
            rsa_bits: 3072,
            keys_dir: None,
            epoch_uses: 4096,
            key_cache: 1024,
            durability: DurabilityMode::Group,
            erase_upstream: EraseUpstream::Keep,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DurabilityMode {
    Group,
    EveryWrite,
}

/// Who may call the sidecar, and what each role may do.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// API keys (`X-Api-Key: …` or `Authorization: Bearer …`). When empty, keys are read from
    /// `data_dir/keys/api-keys.toml`, which is made on first start with a `clinician`, a
    /// `researcher` and an `auditor` key.
    pub api_keys: Vec<ApiKey>,
    /// Roles added to the defaults (`clinician`, `researcher`, `auditor`, `admin`), or
    /// replacing a default of the same name: `[auth.roles.nurse] permissions = ["read",
    /// "search", "see-identity"]`, `operations = ["$everything"]`.
    pub roles: BTreeMap<String, Role>,
    /// Identity searches one principal may make per minute, on average …
    pub identity_searches_per_minute: u32,
    /// … and at once, after a pause.
    pub identity_search_burst: u32,
    /// SMART on FHIR access tokens accepted besides API keys.
    pub smart: SmartConfig,
}

/// SMART on FHIR v2 access tokens (JWTs signed RS256 or ES256) from trusted issuers, verified
/// against each issuer's JWKS: `[[auth.smart.issuers]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SmartConfig {
    pub issuers: Vec<IssuerConfig>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// A JWKS fetched from a URL is fetched again when a token names a key it lacks, at most
    /// once per this many seconds per issuer.
    pub jwks_refresh_secs: u64,
}

impl Default for SmartConfig {
    fn default() -> Self {
        SmartConfig {
            issuers: Vec::new(),
            leeway_secs: 30,
            jwks_refresh_secs: 30,
        }
    }
}

/// One trusted token issuer (an authorization server).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The `iss` its tokens carry, exactly.
    pub issuer: String,
    /// The `aud` its tokens must carry for this sidecar: the FHIR base URL clients use.
    pub audience: String,
    /// Its signing keys: a JWKS file …
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// … or a JWKS URL (cached; fetched again for an unknown `kid`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The claim naming the bearer's role, as `[auth.roles]` defines it.
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// The claim naming the bearer's institution (compared with `seal.institution`).
    #[serde(default = "default_institution_claim")]
    pub institution_claim: String,
    /// The claim stating the purpose of use (an HL7 v3 PurposeOfUse code such as `TREAT`).
    #[serde(default = "default_purpose_claim")]
    pub purpose_claim: String,
    /// Advertised in `.well-known/smart-configuration`; `<issuer>/authorize` when unset.
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    /// Advertised in `.well-known/smart-configuration`; `<issuer>/token` when unset.
    #[serde(default)]
    pub token_endpoint: Option<String>,
}

fn default_role_claim() -> String {
    "fhirseal_role".to_owned()
}
fn default_institution_claim() -> String {
    "organization".to_owned()
}
fn default_purpose_claim() -> String {
    "purpose_of_use".to_owned()
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            api_keys: Vec::new(),
            roles: BTreeMap::new(),
            identity_searches_per_minute: 600,
            identity_search_burst: 120,
            smart: SmartConfig::default(),
        }
    }
}

impl AuthConfig {
    /// The default roles with the configured ones laid over them.
    pub fn roles(&self) -> BTreeMap<String, Role> {
        let mut roles = policy::default_roles();
        roles.extend(self.roles.clone());
        roles
    }
}

/// Anchoring: how the outbox is batched onto the ledger, and when the client hears back.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// Time between anchoring rounds, in milliseconds, while less than a full batch waits.
    pub batch_interval_ms: u64,
    /// Most anchors (and, separately, access events) in one signed batch.
    pub max_batch: usize,
    /// `async`: a write is acknowledged once it is durable in the vault and the outbox, and
    /// anchored within a round or two; `sync`: only once its block is final.
    pub anchor: AnchorMode,
    /// With `anchor = "sync"`, how long a write waits for its block before the client gets 504
    /// (the write stays durable and is anchored later).
    pub sync_timeout_ms: u64,
    /// How many delegates (K) finalize the shared chain: the K active members with the highest
    /// stake, snapshotted each time the governance state begins an epoch. Read when the node
    /// founds a consortium (the embedded default's first start, `consortium init`), which
    /// records it in the genesis; every member then takes it from the governance state.
    pub delegates: u32,
    /// With an election: the member this node's anonymous ballots vote for (itself when not
    /// set). A ballot for a member not seated in the epoch is not cast.
    pub vote_for: Option<String>,
    /// With an election: a delegate makes a block after this many milliseconds without one,
    /// even with nothing to anchor, so that ledger epochs (and elections) advance.
    pub idle_block_ms: u64,
    /// With an election: the least time between blocks, so that an election phase (counted in
    /// blocks) lasts long enough for every member to take part.
    pub min_block_ms: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            batch_interval_ms: 100,
            max_batch: 4096,
            anchor: AnchorMode::Async,
            sync_timeout_ms: 10_000,
            delegates: 4,
            vote_for: None,
            idle_block_ms: 1_000,
            min_block_ms: 200,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AnchorMode {
    Async,
    Sync,
}

/// The audit trail of reads.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Also send a FHIR `AuditEvent` to the upstream for every read (besides the access event
    /// on the ledger, which is always recorded).
    pub upstream_audit_events: bool,
}

/// The node as a consortium member: where its governance listener (HTTP/2 over mutual TLS, for
/// the other members' nodes and its own `fhirseal consortium` commands) and, at the regulator,
/// the join desk listen, and its Raft timing. Who the node is (consortium, member id, Raft node
/// id) is not configuration: `consortium init`, `consortium join` or the first start write it
/// into the data directory.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConsortiumConfig {
    /// Where the governance listener binds. Unset: the address the member was admitted with
    /// (its genesis or join request), and on the embedded default's first start a free
    /// loopback port, which its genesis then records. Port 0 binds a free port at every start.
    /// The address bound is logged and written to `data_dir/consortium/address`.
    pub listen: Option<SocketAddr>,
    /// Where the regulator's join desk (server-authenticated TLS, for applicants) listens.
    /// Unset: where `consortium init --join-listen` put it, or nowhere.
    pub join_listen: Option<SocketAddr>,
    /// Raft timing.
    pub raft: RaftTiming,
}

/// Raft timing of a node, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTiming {
    /// Leader heartbeat.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in [min, 2·min] stands for election.
    pub election_timeout_ms: u64,
    /// A snapshot is built every this many log entries.
    pub snapshot_every: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        // Several heartbeats fit in an election timeout even on a loaded two-core machine, where
        // an fsync can take tens of milliseconds.
        Self {
            heartbeat_ms: 100,
            election_timeout_ms: 500,
            snapshot_every: 1000,
        }
    }
}

/// One API key and the principal it stands for.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub key: String,
    pub institution: String,
    pub role: String,
    /// A name for logs (never the key itself).
    #[serde(default)]
    pub name: Option<String>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("institution", &self.institution)
            .field("role", &self.role)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Where the node's keys live.
    pub fn keys_dir(&self) -> PathBuf {
        self.seal
            .keys_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys"))
    }
}

/// The environment variables read by [`Config::apply_env`], each overriding one field.
pub const ENV_VARS: &[&str] = &[
    "FHIRSEAL_LISTEN",
    "FHIRSEAL_BASE_PATH",
    "FHIRSEAL_PUBLIC_BASE",
    "FHIRSEAL_MAX_BODY_BYTES",
    "FHIRSEAL_TLS_CERT",
    "FHIRSEAL_TLS_KEY",
    "FHIRSEAL_UPSTREAM",
    "FHIRSEAL_UPSTREAM_TIMEOUT_MS",
    "FHIRSEAL_UPSTREAM_CONNECT_TIMEOUT_MS",
    "FHIRSEAL_UPSTREAM_FORWARDED_HEADERS",
    "FHIRSEAL_LOG_FORMAT",
    "FHIRSEAL_LOG",
    "FHIRSEAL_DATA_DIR",
    "FHIRSEAL_INSTITUTION",
    "FHIRSEAL_DURABILITY",
    "FHIRSEAL_ANCHOR",
    "FHIRSEAL_ANCHOR_INTERVAL_MS",
    "FHIRSEAL_DELEGATES",
    "FHIRSEAL_IDLE_BLOCK_MS",
    "FHIRSEAL_MIN_BLOCK_MS",
    "FHIRSEAL_VOTE_FOR",
    "FHIRSEAL_AUDIT_UPSTREAM",
    "FHIRSEAL_CONSORTIUM_LISTEN",
    "FHIRSEAL_JOIN_LISTEN",
    "FHIRSEAL_RAFT_HEARTBEAT_MS",
    "FHIRSEAL_RAFT_ELECTION_TIMEOUT_MS",
    "FHIRSEAL_RAFT_SNAPSHOT_EVERY",
    "FHIRSEAL_ADMIN_LISTEN",
];

impl Config {
    /// The defaults, then the TOML file `file` (when given), then the environment read through
    /// `env`; the caller lays its flags over that and calls [`Config::validate`].
    pub fn layered(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply_env(env)?;
        Ok(config)
    }

    /// Defaults overlaid with the TOML file at `path`.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Overrides fields from environment variables read through `env`, a seam so that tests
    /// pass a map instead of touching the process environment.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(name: &'static str, value: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            value.parse().map_err(|e: T::Err| ConfigError::Env {
                name,
                reason: format!("'{value}': {e}"),
            })
        }
        if let Some(v) = env("FHIRSEAL_LISTEN") {
            self.server.listen = parse("FHIRSEAL_LISTEN", &v)?;
        }
        if let Some(v) = env("FHIRSEAL_ADMIN_LISTEN") {
            self.admin.listen = Some(parse("FHIRSEAL_ADMIN_LISTEN", &v)?);
        }
        if let Some(v) = env("FHIRSEAL_BASE_PATH") {
            self.server.base_path = v;
        }
        if let Some(v) = env("FHIRSEAL_PUBLIC_BASE") {
            self.server.public_base = Some(v);
        }
        if let Some(v) = env("FHIRSEAL_MAX_BODY_BYTES") {
            self.server.max_body_bytes = parse("FHIRSEAL_MAX_BODY_BYTES", &v)?;
        }
        let cert = env("FHIRSEAL_TLS_CERT");
        let key = env("FHIRSEAL_TLS_KEY");
        match (cert, key) {
            (Some(cert), Some(key)) => {
                self.server.tls = Some(TlsConfig {
                    cert: cert.into(),
                    key: key.into(),
                })
            }
            (None, None) => {}
            _ => {
                return Err(ConfigError::Env {
                    name: "FHIRSEAL_TLS_CERT",
                    reason: "FHIRSEAL_TLS_CERT and FHIRSEAL_TLS_KEY go together".to_owned(),
                })
            }
        }
        if let Some(v) = env("FHIRSEAL_UPSTREAM") {
            self.upstream.url = v;
        }
        if let Some(v) = env("FHIRSEAL_UPSTREAM_TIMEOUT_MS") {
            self.upstream.timeout_ms = parse("FHIRSEAL_UPSTREAM_TIMEOUT_MS", &v)?;
        }
        if let Some(v) = env("FHIRSEAL_UPSTREAM_CONNECT_TIMEOUT_MS") {
            self.upstream.connect_timeout_ms = parse("FHIRSEAL_UPSTREAM_CONNECT_TIMEOUT_MS", &v)?;
        }
        if let Some(v) = env("FHIRSEAL_UPSTREAM_FORWARDED_HEADERS") {
            self.upstream.honours_forwarded_headers =
                parse("FHIRSEAL_UPSTREAM_FORWARDED_HEADERS", &v)?;
        }
        if let Some(v) = env("FHIRSEAL_LOG_FORMAT") {
            self.log.format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => {
                    return Err(ConfigError::Env {
                        name: "FHIRSEAL_LOG_FORMAT",
                        reason: format!("'{v}': expected text or json"),
                    })
                }
            };
        }
        if let Some(v) = env("FHIRSEAL_LOG") {
            self.log.filter = v;
        }
        if let Some(v) = env("FHIRSEAL_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = env("FHIRSEAL_INSTITUTION") {
            self.seal.institution = v;
        }
        if let Some(v) = env("FHIRSEAL_DURABILITY") {
            self.seal.durability = match v.as_str() {
                "group" => DurabilityMode::Group,
                "every-write" => DurabilityMode::EveryWrite,
                _ => {
                    return Err(ConfigError::Env {
                        name: "FHIRSEAL_DURABILITY",
                        reason: format!("'{v}': expected group or every-write"),
                    })
                }
            };
        }
        if let Some(v) = env("FHIRSEAL_ANCHOR") {
            self.ledger.anchor = match v.as_str() {
                "async" => AnchorMode::Async,
                "sync" => AnchorMode::Sync,
                _ => {
                    return Err(ConfigError::Env {
                        name: "FHIRSEAL_ANCHOR",
                        reason: format!("'{v}': expected async or sync"),
                    })
                }
            };
        }
        if let Some(v) = env("FHIRSEAL_ANCHOR_INTERVAL_MS") {
            self.ledger.batch_interval_ms = parse("FHIRSEAL_ANCHOR_INTERVAL_MS", &v)?;
        }
        if let Some(v) = env("FHIRSEAL_DELEGATES") {
            self.ledger.delegates = parse("FHIRSEAL_DELEGATES", &v)?;
        }
        if let Some(v) = env("FHIRSEAL_IDLE_BLOCK_MS") {
            self.ledger.idle_block_ms = parse("FHIRSEAL_IDLE_BLOCK_MS", &v)?;
        }
        if let Some(v) = env("FHIRSEAL_MIN_BLOCK_MS") {
            self.ledger.min_block_ms = parse("FHIRSEAL_MIN_BLOCK_MS", &v)?;
        }
        if let Some(v) = env("FHIRSEAL_VOTE_FOR") {
            self.ledger.vote_for = Some(v);
        }
        if let Some(v) = env("FHIRSEAL_AUDIT_UPSTREAM") {
            self.audit.upstream_audit_events = parse("FHIRSEAL_AUDIT_UPSTREAM", &v)?;
        }
        if let Some(v) = env("FHIRSEAL_CONSORTIUM_LISTEN") {
            self.consortium.listen = Some(parse("FHIRSEAL_CONSORTIUM_LISTEN", &v)?);
        }
        if let Some(v) = env("FHIRSEAL_JOIN_LISTEN") {
            self.consortium.join_listen = Some(parse("FHIRSEAL_JOIN_LISTEN", &v)?);
        }
        let raft = &mut self.consortium.raft;
        if let Some(v) = env("FHIRSEAL_RAFT_HEARTBEAT_MS") {
            raft.heartbeat_ms = parse("FHIRSEAL_RAFT_HEARTBEAT_MS", &v)?;
        }
        if let Some(v) = env("FHIRSEAL_RAFT_ELECTION_TIMEOUT_MS") {
            raft.election_timeout_ms = parse("FHIRSEAL_RAFT_ELECTION_TIMEOUT_MS", &v)?;
        }
        if let Some(v) = env("FHIRSEAL_RAFT_SNAPSHOT_EVERY") {
            raft.snapshot_every = parse("FHIRSEAL_RAFT_SNAPSHOT_EVERY", &v)?;
        }
        Ok(())
    }

    /// Checks what serde cannot: URLs, paths and bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        let base = &self.server.base_path;
        if !base.starts_with('/') || base.contains(['?', '#']) {
            return Err(invalid(
                "server.base_path",
                "must start with '/' and hold no query",
            ));
        }
        if self
            .admin
            .listen
            .is_some_and(|a| a == self.server.listen && a.port() != 0)
        {
            return Err(invalid(
                "admin.listen",
                "must differ from server.listen: health and metrics leave the FHIR port",
            ));
        }
        if self.server.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes", "must be above 0"));
        }
        if let Some(public) = &self.server.public_base {
            absolute_http_url(public).map_err(|r| invalid("server.public_base", &r))?;
        }
        absolute_http_url(&self.upstream.url).map_err(|r| invalid("upstream.url", &r))?;
        if self.upstream.timeout_ms == 0 || self.upstream.connect_timeout_ms == 0 {
            return Err(invalid("upstream", "timeouts must be above 0"));
        }
        if !(2048..=8192).contains(&self.seal.rsa_bits) {
            return Err(invalid("seal.rsa_bits", "must be between 2048 and 8192"));
        }
        if self.seal.institution.is_empty() {
            return Err(invalid("seal.institution", "must not be empty"));
        }
        if self.seal.institution.len() > MAX_LEDGER_NAME {
            return Err(invalid(
                "seal.institution",
                "must be at most 256 bytes (it is named on the ledger)",
            ));
        }
        for key in &self.auth.api_keys {
            if key.key.len() < 16 {
                return Err(invalid(
                    "auth.api_keys",
                    "each key needs at least 16 characters",
                ));
            }
            if key.name.as_deref().unwrap_or(&key.role).len() > MAX_LEDGER_NAME {
                return Err(invalid(
                    "auth.api_keys",
                    "a key's name (or role) must be at most 256 bytes (it is named on the ledger)",
                ));
            }
        }
        let roles = self.auth.roles();
        for key in &self.auth.api_keys {
            if !roles.contains_key(&key.role) {
                return Err(ConfigError::Invalid {
                    field: "auth.api_keys",
                    reason: format!(
                        "the role '{}' is not defined (defined: {}); add [auth.roles.{}]",
                        key.role,
                        roles.keys().cloned().collect::<Vec<_>>().join(", "),
                        key.role
                    ),
                });
            }
        }
        if self.auth.identity_searches_per_minute == 0 || self.auth.identity_search_burst == 0 {
            return Err(invalid(
                "auth.identity_searches_per_minute",
                "the rate and the burst of identity searches must be above 0",
            ));
        }
        self.validate_smart()?;
        let server = &self.server;
        if server.max_connections == 0
            || server.max_concurrent_requests == 0
            || server.max_http2_streams == 0
            || server.body_read_timeout_secs == 0
            || server.max_reidentify_bytes == 0
        {
            return Err(invalid(
                "server",
                "connection, request and stream limits and the body read timeout must be above 0",
            ));
        }
        if server.max_header_bytes < 8192 {
            return Err(invalid("server.max_header_bytes", "must be at least 8192"));
        }
        let auth = &self.upstream.auth;
        if auth.bearer_token_file.is_some() && auth.basic_user.is_some() {
            return Err(invalid(
                "upstream.auth",
                "a bearer token or a basic user, not both",
            ));
        }
        if auth.basic_user.is_some() != auth.basic_password_file.is_some() {
            return Err(invalid(
                "upstream.auth",
                "basic_user and basic_password_file go together",
            ));
        }
        if auth.client_cert.is_some() != auth.client_key.is_some() {
            return Err(invalid(
                "upstream.auth",
                "client_cert and client_key go together",
            ));
        }
        if !(1..=60_000).contains(&self.ledger.batch_interval_ms) {
            return Err(invalid(
                "ledger.batch_interval_ms",
                "must be between 1 and 60000",
            ));
        }
        if !(1..=MAX_BATCH).contains(&self.ledger.max_batch) {
            return Err(invalid("ledger.max_batch", "must be between 1 and 65536"));
        }
        if self.ledger.sync_timeout_ms == 0 {
            return Err(invalid("ledger.sync_timeout_ms", "must be above 0"));
        }
        if !(1..=256).contains(&self.ledger.delegates) {
            return Err(invalid("ledger.delegates", "must be between 1 and 256"));
        }
        let raft = &self.consortium.raft;
        if raft.heartbeat_ms == 0
            || raft.election_timeout_ms <= raft.heartbeat_ms
            || raft.snapshot_every == 0
        {
            return Err(invalid(
                "consortium.raft",
                "heartbeat_ms must be above 0 and below election_timeout_ms, snapshot_every above 0",
            ));
        }
        Ok(())
    }
}

impl Config {
    fn validate_smart(&self) -> Result<(), ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            field: "auth.smart.issuers",
            reason,
        };
        let smart = &self.auth.smart;
        if smart.leeway_secs > 300 {
            return Err(ConfigError::Invalid {
                field: "auth.smart.leeway_secs",
                reason: "must be at most 300".to_owned(),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for issuer in &smart.issuers {
            absolute_http_url(&issuer.issuer).map_err(invalid)?;
            if !seen.insert(issuer.issuer.as_str()) {
                return Err(invalid(format!("'{}' is listed twice", issuer.issuer)));
            }
            if issuer.audience.is_empty() {
                return Err(invalid(format!(
                    "'{}': audience must not be empty",
                    issuer.issuer
                )));
            }
            match (&issuer.jwks_file, &issuer.jwks_url) {
                (Some(_), None) => {}
                (None, Some(url)) => {
                    absolute_http_url(url).map_err(invalid)?;
                }
                _ => {
                    return Err(invalid(format!(
                        "'{}': one of jwks_file and jwks_url",
                        issuer.issuer
                    )))
                }
            }
            for url in [&issuer.authorization_endpoint, &issuer.token_endpoint]
                .into_iter()
                .flatten()
            {
                absolute_http_url(url).map_err(invalid)?;
            }
        }
        Ok(())
    }
}

/// Longest name the ledger records (institution, principal).
const MAX_LEDGER_NAME: usize = 256;
/// Most items in one ledger batch.
const MAX_BATCH: usize = 1 << 16;

/// An `http` or `https` URL with a host and no query or fragment.
pub(crate) fn absolute_http_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("'{url}' is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("'{url}' must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("'{url}' has no host"));
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(format!("'{url}' must not carry a query or fragment"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults_are_the_embedded_single_node() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.upstream.url, "http://localhost:8080/fhir");
        assert_eq!(config.server.base_path, "/fhir");
        assert_eq!(Config::from_toml("").unwrap(), config);
    }

    #[test]
    fn file_then_environment() {
        let mut config = Config::from_toml(
            r#"
            data_dir = "/var/lib/fhirseal"
            [server]
            listen = "0.0.0.0:9443"
            max_body_bytes = 1024
            [server.tls]
            cert = "/etc/fhirseal/cert.pem"
            key = "/etc/fhirseal/key.pem"
            [upstream]
            url = "http://hapi:8080/fhir"
            "#,
        )
        .unwrap();
        assert_eq!(config.server.listen.port(), 9443);
        assert_eq!(config.server.max_body_bytes, 1024);
        assert!(config.server.tls.is_some());
        let env: HashMap<&str, &str> = HashMap::from([
            ("FHIRSEAL_UPSTREAM", "https://fhir.example.org/r4"),
            ("FHIRSEAL_MAX_BODY_BYTES", "2048"),
            ("FHIRSEAL_LOG_FORMAT", "json"),
        ]);
        config
            .apply_env(|k| env.get(k).map(|v| v.to_string()))
            .unwrap();
        assert_eq!(config.upstream.url, "https://fhir.example.org/r4");
        assert_eq!(config.server.max_body_bytes, 2048);
        assert_eq!(config.log.format, LogFormat::Json);
        config.validate().unwrap();
    }

    #[test]
    fn the_consortium_section_from_file_and_environment() {
        let config = Config::from_toml(
            "[consortium]\nlisten = \"127.0.0.1:7101\"\n[consortium.raft]\nheartbeat_ms = 50\n",
        )
        .unwrap();
        assert_eq!(
            config.consortium.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 7101)))
        );
        assert_eq!(config.consortium.raft.heartbeat_ms, 50);
        assert_eq!(config.consortium.join_listen, None);
        let env: HashMap<&str, &str> = HashMap::from([
            ("FHIRSEAL_CONSORTIUM_LISTEN", "127.0.0.1:0"),
            ("FHIRSEAL_JOIN_LISTEN", "127.0.0.1:7300"),
            ("FHIRSEAL_RAFT_ELECTION_TIMEOUT_MS", "40"),
        ]);
        let mut config = config;
        config
            .apply_env(|k| env.get(k).map(|v| v.to_string()))
            .unwrap();
        assert_eq!(config.consortium.listen.map(|a| a.port()), Some(0));
        assert_eq!(config.consortium.join_listen.map(|a| a.port()), Some(7300));
        // An election timeout below the heartbeat is refused.
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid {
                field: "consortium.raft",
                ..
            })
        ));
    }

    #[test]
    fn smart_issuers_from_file() {
        let mut config = Config::from_toml(
            r#"
            [[auth.smart.issuers]]
            issuer = "https://auth.example.org"
            audience = "https://seal.example.org/fhir"
            jwks_url = "https://auth.example.org/jwks.json"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        let issuer = &config.auth.smart.issuers[0];
        assert_eq!(issuer.role_claim, "fhirseal_role");
        assert_eq!(issuer.institution_claim, "organization");
        assert_eq!(issuer.purpose_claim, "purpose_of_use");
        assert_eq!(config.auth.smart.leeway_secs, 30);
        config.auth.smart.issuers[0].jwks_file = Some("/etc/jwks.json".into());
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid {
                field: "auth.smart.issuers",
                ..
            })
        ));
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::from_toml("[server]\nlisen = 1").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        let mut config = Config::default();
        let err = config
            .apply_env(|k| (k == "FHIRSEAL_MAX_BODY_BYTES").then(|| "lots".to_owned()))
            .unwrap_err();
        assert!(err.to_string().contains("FHIRSEAL_MAX_BODY_BYTES"), "{err}");
        let err = config
            .apply_env(|k| (k == "FHIRSEAL_TLS_CERT").then(|| "c.pem".to_owned()))
            .unwrap_err();
        assert!(err.to_string().contains("FHIRSEAL_TLS_KEY"), "{err}");
        config.upstream.url = "ftp://x/fhir".to_owned();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid {
                field: "upstream.url",
                ..
            })
        ));
        config.upstream.url = "http://x/fhir?a=b".to_owned();
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.server.base_path = "fhir".to_owned();
        assert!(config.validate().is_err());
    }
}
