//! The example configuration shipped in `deploy/` parses, and is the default configuration.

#![allow(clippy::unwrap_used)]

#[test]
fn example_config_is_the_default() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/fhirseal.example.toml");
    let config = fhirseal_sidecar::Config::from_file(&path).unwrap();
    config.validate().unwrap();
    assert_eq!(config, fhirseal_sidecar::Config::default());
}
