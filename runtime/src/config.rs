//! Loading versioned TOML configuration with environment overrides.
//!
//! `DOMICILE_NODE__LISTEN=127.0.0.1:0` overrides `listen` in a node file; `__` separates nesting
//! levels so snake_case keys survive.

use std::path::Path;

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
#[error("configuration {path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// Process exit code for a bad configuration (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// Reads `path` (TOML) and applies `<env_prefix>_…` overrides, then deserialises into `T`,
/// which should be `#[serde(deny_unknown_fields)]`.
pub fn load<T: DeserializeOwned>(path: &Path, env_prefix: &str) -> Result<T, ConfigError> {
    let err = |message: String| ConfigError { path: path.display().to_string(), message };
    config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml).required(true))
        .add_source(
            config::Environment::with_prefix(env_prefix).prefix_separator("_").separator("__").try_parsing(true),
        )
        .build()
        .map_err(|e| err(e.to_string()))?
        .try_deserialize::<T>()
        .map_err(|e| err(e.to_string()))
}
