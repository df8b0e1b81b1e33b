//! The API-key table: from the configuration, or from `api-keys.toml` in the keys directory,
//! which is made on first start with one key per role (clinician, researcher, auditor) so that
//! the embedded default is usable.

use std::io::Write;
use std::path::{Path, PathBuf};

use fhirseal_adapters::auth::ApiKeyTable;
use serde::Deserialize;

use crate::config::{ApiKey, Config};

/// Why the API keys cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("API key file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error(transparent)]
    Role(#[from] fhirseal_adapters::auth::UnknownRole),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    api_keys: Vec<ApiKey>,
}

/// The API key file of a configuration.
pub fn key_file(config: &Config) -> PathBuf {
    config.keys_dir().join("api-keys.toml")
}

/// The table the proxy authenticates against.
pub fn load(config: &Config) -> Result<ApiKeyTable, AuthSetupError> {
    let keys = if config.auth.api_keys.is_empty() {
        let path = key_file(config);
        if !path.exists() {
            make_key_file(&path, &config.seal.institution)?;
            tracing::info!(file = %path.display(), "made API keys (clinician, researcher)");
        }
        read_key_file(&path)?
    } else {
        config.auth.api_keys.clone()
    };
    ApiKeyTable::new(
        keys.iter().map(|k| {
            (
                k.key.as_str(),
                k.institution.as_str(),
                k.role.as_str(),
                k.name.as_deref(),
            )
        }),
        &config.auth.roles(),
        &config.seal.institution,
    )
    .map_err(AuthSetupError::from)
}

fn read_key_file(path: &Path) -> Result<Vec<ApiKey>, AuthSetupError> {
    let err = |reason: String| AuthSetupError::File {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let file: KeyFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    if file.api_keys.iter().any(|k| k.key.len() < 16) {
        return Err(err("each key needs at least 16 characters".to_owned()));
    }
    Ok(file.api_keys)
}

fn make_key_file(path: &Path, institution: &str) -> Result<(), AuthSetupError> {
    let err = |reason: String| AuthSetupError::File {
        path: path.to_owned(),
        reason,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let mut text = String::from(
        "# API keys of this fhirseal node, made on first start. Send one as `X-Api-Key: <key>`\n\
         # or `Authorization: Bearer <key>`. What each role may do is in [auth.roles] (the\n\
         # defaults: a clinician reads, writes and sees identity; a researcher reads and\n\
         # searches pseudonymized data; an auditor reads the ledger).\n",
    );
    for role in ["clinician", "researcher", "auditor"] {
        let mut raw = [0u8; 24];
        getrandom::fill(&mut raw).map_err(|e| err(e.to_string()))?;
        let key: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        text.push_str(&format!(
            "\n[[api_keys]]\nname = \"{role}\"\nrole = \"{role}\"\ninstitution = \"{institution}\"\nkey = \"{key}\"\n"
        ));
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| err(e.to_string()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_made_once_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let table = load(&config).unwrap();
        assert_eq!(table.len(), 3);
        let text = std::fs::read_to_string(key_file(&config)).unwrap();
        let again = load(&config).unwrap();
        assert_eq!(again.len(), 3);
        assert_eq!(std::fs::read_to_string(key_file(&config)).unwrap(), text);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key_file(&config))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
