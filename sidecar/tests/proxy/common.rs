//! Helpers: a sidecar on port 0 in front of an upstream, and a small HTTP client.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use fhirseal_sidecar::config::ApiKey;
use fhirseal_sidecar::ledger::NodeLedger;
use fhirseal_sidecar::sealing::Sealing;
use fhirseal_sidecar::{Config, Sidecar};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::oneshot;

/// The real HAPI FHIR base the tests run against.
pub fn hapi() -> String {
    std::env::var("FHIRSEAL_TEST_HAPI")
        .map(|v| v.trim_end_matches('/').to_owned())
        .expect(
            "FHIRSEAL_TEST_HAPI is not set: run the tests with deploy/test.sh, which starts HAPI \
             FHIR and sets it (or start HAPI with deploy/hapi/hapi.sh and export its base URL)",
        )
}

/// The API key of a principal who sees identity, and of one who does not.
pub const CLINICIAN_KEY: &str = "test-clinician-key-0001";
pub const RESEARCHER_KEY: &str = "test-researcher-key-0001";
/// The API key of a principal who reads the access events on the ledger.
pub const AUDITOR_KEY: &str = "test-auditor-key-0001";
/// The API key of an administrator (server operations, `$erase`).
pub const ADMIN_KEY: &str = "test-admin-key-0001";

/// One keystore for the whole test binary: RSA key generation is slow. Made whole before any
/// sidecar starts, so that the sidecars that share it only read it.
fn keys_dir() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        fhirseal_sidecar::keystore::Keystore::open_or_create(&dir.path().join("keys"), 2048)
            .unwrap();
        dir
    });
    dir.path().join("keys")
}

/// A sidecar serving in the background; stops when dropped.
pub struct TestSidecar {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT/fhir`
    pub base: String,
    pub sealing: Arc<Sealing>,
    pub ledger: Arc<NodeLedger>,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
    /// Kept so that the data directory outlives the sidecar.
    _data: Option<Arc<tempfile::TempDir>>,
}

impl Drop for TestSidecar {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestSidecar {
    /// Stops the sidecar and waits until it has let go of its vault.
    pub async fn stop(mut self) -> (Config, Option<Arc<tempfile::TempDir>>) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            done.await.unwrap();
        }
        let config = self.config.clone();
        let data = self._data.take();
        drop(self);
        (config, data)
    }
}

/// The configuration tests start from: port 0 on loopback, in front of `upstream`, with the
/// test keys and a fresh data directory.
pub fn config(upstream: &str) -> Config {
    let mut config = Config::default();
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    // Each start takes a free port (a restart in particular: the one a consortium of one was
    // founded on may be another test's by then).
    config.consortium.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.upstream.url = upstream.to_owned();
    config.seal.keys_dir = Some(keys_dir());
    config.seal.rsa_bits = 2048;
    config.auth.api_keys = vec![
        api_key(CLINICIAN_KEY, "clinician"),
        api_key(RESEARCHER_KEY, "researcher"),
        api_key(AUDITOR_KEY, "auditor"),
        api_key(ADMIN_KEY, "admin"),
    ];
    config
}

fn api_key(key: &str, role: &str) -> ApiKey {
    ApiKey {
        key: key.to_owned(),
        institution: "local".to_owned(),
        role: role.to_owned(),
        name: Some(role.to_owned()),
    }
}

pub async fn start(config: Config) -> TestSidecar {
    let data = Arc::new(tempfile::tempdir().unwrap());
    let mut config = config;
    config.data_dir = data.path().to_owned();
    start_with_data(config, Some(data)).await
}

/// Starts a sidecar on `config.data_dir` as it is (for restarts).
pub async fn start_with_data(config: Config, data: Option<Arc<tempfile::TempDir>>) -> TestSidecar {
    // After a stop, the old sidecar's last tasks may hold the vault's lock for a moment.
    let mut attempts = 0;
    let sidecar = loop {
        match Sidecar::bind(&config).await {
            Ok(sidecar) => break sidecar,
            Err(e) if attempts < 50 && e.to_string().contains("lock") => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("sidecar did not start: {e}"),
        }
    };
    let addr = sidecar.local_addr();
    let sealing = sidecar.sealing();
    let ledger = sidecar.ledger();
    let scheme = if sidecar.is_tls() { "https" } else { "http" };
    let (tx, rx) = oneshot::channel();
    let done = tokio::spawn(async move {
        sidecar
            .serve(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    TestSidecar {
        addr,
        base: format!("{scheme}://{addr}{}", config.server.base_path),
        sealing,
        ledger,
        config,
        shutdown: Some(tx),
        done: Some(done),
        _data: data,
    }
}

/// A sidecar in front of the real HAPI.
pub async fn start_in_front_of_hapi() -> TestSidecar {
    start(config(&hapi())).await
}

/// What a test looks at in a response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    /// Asserts the body is an `OperationOutcome` with an error issue, and returns its text.
    pub fn assert_outcome(&self, status: u16) -> String {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        let json = self.json();
        assert_eq!(json["resourceType"], "OperationOutcome", "{json}");
        assert_eq!(json["issue"][0]["severity"], "error", "{json}");
        json["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Sends one request over HTTP/1.1, as the clinician unless `headers` carry credentials.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let credentials = headers.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("x-api-key") || n.eq_ignore_ascii_case("authorization")
    });
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if !credentials {
        all.push(("x-api-key", CLINICIAN_KEY));
    }
    send_raw(method, url, &all, body).await
}

/// Sends one request exactly as given (no credentials added).
pub async fn send_raw(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, HeaderValue::from_str(value).unwrap());
    }
    let request = builder.body(Full::new(body.into())).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(120), client.request(request))
        .await
        .expect("request timed out")
        .unwrap_or_else(|e| panic!("request to {url} failed: {e:?}"));
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub const FHIR_JSON: (&str, &str) = ("content-type", "application/fhir+json");

pub async fn get(url: &str) -> Reply {
    send(Method::GET, url, &[("accept", "application/fhir+json")], "").await
}

pub async fn post_json(url: &str, body: &Value) -> Reply {
    send(Method::POST, url, &[FHIR_JSON], body.to_string()).await
}

/// A tag unique to one test run, for resources that must not meet those of other tests.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The body with what differs between two equal answers taken out: ids, `meta`, timestamps,
/// and the two base URLs made one.
pub fn normalize(reply: &Reply, base: &str) -> Value {
    let text = reply.text().replace(base, "BASE");
    let mut value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    scrub(&mut value);
    value
}

fn scrub(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for key in [
                "id",
                "meta",
                "lastUpdated",
                "date",
                "fullUrl",
                "location",
                "etag",
            ] {
                map.remove(key);
            }
            // A history entry's request names the resource by its server-chosen id.
            if map.contains_key("method") {
                map.remove("url");
            }
            // Search and history links carry server-chosen page ids.
            if map.get("resourceType") == Some(&Value::from("Bundle")) {
                map.remove("link");
            }
            // Diagnostics may quote times ("Resource was deleted at …").
            if let Some(Value::String(text)) = map.get_mut("diagnostics") {
                *text = text.replace(|c: char| c.is_ascii_digit(), "0");
            }
            for v in map.values_mut() {
                scrub(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub),
        _ => {}
    }
}

/// The elements of a Synthea Patient that carry identity (compared after a read-back).
pub const IDENTITY_ELEMENTS: [&str; 6] = [
    "name",
    "identifier",
    "telecom",
    "address",
    "birthDate",
    "extension",
];

/// The Synthea patient bundles of the shared data (`shared/` beside the repository), or of
/// `FHIRSEAL_SYNTHEA_DIR`, in name order.
pub fn synthea_files() -> Vec<PathBuf> {
    let dir = std::env::var_os("FHIRSEAL_SYNTHEA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/synthea")
        });
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// A small, valid Patient, tagged with `family` so that HAPI can be asked for it directly
/// (the tag is clinical data; the name is not).
pub fn patient(family: &str) -> Value {
    serde_json::json!({
        "resourceType": "Patient",
        "meta": {"tag": [{"system": "urn:fhirseal:test", "code": family}]},
        "identifier": [{"system": "urn:fhirseal:test", "value": family}],
        "name": [{"family": family, "given": ["Ada"]}],
        "gender": "female",
        "birthDate": "1970-01-02"
    })
}

/// A TOML file for the `fhirseal` binary with what `config` sets that tests rely on: data
/// directory, keys, upstream, listener, API keys, anchoring.
pub fn config_file(config: &Config, dir: &std::path::Path) -> PathBuf {
    let keys = config.keys_dir();
    let mut text = format!(
        "data_dir = {:?}\n[server]\nlisten = \"{}\"\n[upstream]\nurl = {:?}\ntimeout_ms = {}\n[seal]\nkeys_dir = {:?}\nrsa_bits = {}\n[ledger]\nbatch_interval_ms = {}\n[consortium]\nlisten = \"127.0.0.1:0\"\n",
        config.data_dir.display().to_string(),
        config.server.listen,
        config.upstream.url,
        config.upstream.timeout_ms,
        keys.display().to_string(),
        config.seal.rsa_bits,
        config.ledger.batch_interval_ms,
    );
    for key in &config.auth.api_keys {
        text.push_str(&format!(
            "[[auth.api_keys]]\nkey = {:?}\ninstitution = {:?}\nrole = {:?}\n",
            key.key, key.institution, key.role
        ));
    }
    let path = dir.join("fhirseal.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `fhirseal` with `args` once; returns its exit code and what it printed.
pub async fn fhirseal_once(args: &[&str]) -> (i32, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_fhirseal"))
            .args(&args)
            .env_remove("FHIRSEAL_CONFIG")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code().unwrap_or(-1), printed)
    })
    .await
    .unwrap()
}

/// [`fhirseal_once`], for a node stopped a moment ago: while its last tasks end it may still
/// hold its databases, and the run is retried then.
pub async fn fhirseal(args: &[&str]) -> (i32, String) {
    for _ in 0..50 {
        let (code, printed) = fhirseal_once(args).await;
        if !printed.contains("in use by a running fhirseal") && !printed.contains("acquire lock") {
            return (code, printed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("fhirseal {args:?}: the data directory stayed locked");
}

/// Waits until the sidecar's outbox is empty (everything written so far is anchored).
pub async fn anchored(ledger: &NodeLedger) {
    for _ in 0..200 {
        if ledger.outbox().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the outbox did not drain: {:?}", ledger.status());
}

/// Every item of one kind in the chain, block after block, read through the ledger API at
/// `ledger` (`http://…/ledger`) as the auditor: `"entries"` for anchors, `"events"` for access
/// events.
pub async fn chain_items(ledger: &str, kind: &str) -> Vec<Value> {
    let auditor = [("x-api-key", AUDITOR_KEY)];
    let status = send(Method::GET, &format!("{ledger}/status"), &auditor, "")
        .await
        .json();
    let mut items = Vec::new();
    for height in 0..status["blocks"].as_u64().unwrap() {
        let block = send(
            Method::GET,
            &format!("{ledger}/blocks/{height}"),
            &auditor,
            "",
        )
        .await
        .json();
        for tx in block["transactions"].as_array().unwrap() {
            items.extend(tx[kind].as_array().into_iter().flatten().cloned());
        }
    }
    items
}

/// How many times each resource version is anchored in the chain at `ledger`.
pub async fn anchor_counts(ledger: &str) -> std::collections::BTreeMap<String, u32> {
    let mut counts = std::collections::BTreeMap::new();
    for entry in chain_items(ledger, "entries").await {
        *counts
            .entry(entry["resource"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    counts
}

/// The text of every page of a Bundle answer, from `first` through its `next` links.
pub async fn all_pages(first: &str) -> String {
    let mut all = String::new();
    let mut url = first.to_owned();
    loop {
        let reply = get(&url).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let page = reply.json();
        all.push_str(&reply.text());
        let next = fhirseal_adapters::resource::next_link(&page).map(str::to_owned);
        match next {
            Some(next) => url = next,
            None => return all,
        }
    }
}

pub use crate::ports::free_port;

/// The `fhirseal` process of one round.
pub struct Node {
    pub child: Child,
    pub base: String,
}

impl Node {
    /// Starts the binary on `config` (a fresh port each time), with the crash point `crash_at`
    /// (`FHIRSEAL_TEST_CRASH_AT`) if given, and waits until it answers.
    pub async fn start(
        config: &mut fhirseal_sidecar::Config,
        dir: &std::path::Path,
        crash_at: Option<&str>,
    ) -> Node {
        let mut node = Node::spawn(config, dir, crash_at);
        if node.answers(Duration::from_secs(60)).await {
            return node;
        }
        let _ = node.child.kill();
        let _ = node.child.wait();
        panic!(
            "fhirseal did not start: {}",
            std::fs::read_to_string(dir.join("fhirseal.log")).unwrap_or_default()
        );
    }

    /// Starts the binary as [`Node::start`] does, without waiting for it; its output is
    /// appended to `dir/fhirseal.log`.
    pub fn spawn(
        config: &mut fhirseal_sidecar::Config,
        dir: &std::path::Path,
        crash_at: Option<&str>,
    ) -> Node {
        let port = free_port();
        config.server.listen = ([127, 0, 0, 1], port).into();
        let file = config_file(config, dir);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("fhirseal.log"))
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_fhirseal"));
        command
            .args(["run", "--config", file.to_str().unwrap()])
            .env_remove("FHIRSEAL_CONFIG")
            .env_remove("FHIRSEAL_TEST_CRASH_AT")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        if let Some(point) = crash_at {
            command.env("FHIRSEAL_TEST_CRASH_AT", point);
        }
        Node {
            child: command.spawn().unwrap(),
            base: format!("http://127.0.0.1:{port}/fhir"),
        }
    }

    /// Waits up to `limit` until the process answers `/healthz`; false when it did not, or
    /// ended first.
    pub async fn answers(&mut self, limit: Duration) -> bool {
        let health = self.base.replace("/fhir", "/healthz");
        let started = Instant::now();
        while started.elapsed() < limit {
            if try_get(&health).await.is_some() {
                return true;
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Waits for the process to end by itself (a crash point reached).
    pub fn wait(mut self) {
        let _ = self.child.wait();
    }

    /// SIGTERM, and waits: a clean shutdown.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    pub fn kill(mut self) {
        // SIGKILL: no shutdown, no last anchoring round, no flush.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn ledger(&self, path: &str) -> String {
        self.base.replace("/fhir", &format!("/ledger/{path}"))
    }
}

impl Drop for Node {
    /// A node a failed test left running is killed with it.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A GET that may fail (the process may be down).
pub async fn try_get(url: &str) -> Option<Reply> {
    try_get_as(url, CLINICIAN_KEY).await
}

/// [`try_get`] with the API key `key`.
pub async fn try_get_as(url: &str, key: &str) -> Option<Reply> {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let request = http::Request::get(url)
        .header("x-api-key", key)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
        .await
        .ok()?
        .ok()?;
    let (parts, body) = response.into_parts();
    use http_body_util::BodyExt as _;
    Some(Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.ok()?.to_bytes(),
    })
}

/// xorshift64*: enough to place kills reproducibly from a seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `low..high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

/// A number from the environment, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A write as the clinician that a kill may cut off: `None` when no whole answer came back.
pub async fn try_send(method: Method, url: &str, body: &Value) -> Option<Reply> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("x-api-key", CLINICIAN_KEY)
        .header("content-type", "application/fhir+json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(120), client.request(request))
        .await
        .ok()?
        .ok()?;
    let (parts, body) = response.into_parts();
    // A body cut off by the kill is no acknowledgement.
    let body = body.collect().await.ok()?.to_bytes();
    Some(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// `Type/id/_history/v` out of a location URL.
pub fn version_of(location: &str) -> String {
    let parts: Vec<&str> = location.rsplit('/').take(4).collect();
    format!("{}/{}/_history/{}", parts[3], parts[2], parts[0])
}

/// The `n` smallest Synthea bundles, smallest first: each keeps a write to a second or two of
/// HAPI's time.
pub fn small_bundles(n: usize) -> Vec<Value> {
    let mut files = synthea_files();
    files.sort_by_key(|f| std::fs::metadata(f).unwrap().len());
    files
        .into_iter()
        .take(n)
        .map(|file| serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap())
        .collect()
}
