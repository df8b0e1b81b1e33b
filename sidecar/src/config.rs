//! Typed configuration: defaults for the embedded single node, then a TOML file, then the
//! environment, then CLI flags, then [`Config::validate`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Where the node keeps its keys, vault and ledger.
    pub data_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            upstream: UpstreamConfig::default(),
            log: LogConfig::default(),
            data_dir: PathBuf::from("./fhirseal-data"),
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
            tls: None,
        }
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
        }
    }
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
            filter: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
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
];

impl Config {
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
        Ok(())
    }
}

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
