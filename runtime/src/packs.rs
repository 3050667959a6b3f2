//! Reads a pack directory (`<dir>/<pack>/pack.toml`) into sources for the pure policy compiler.

use std::path::{Path, PathBuf};

use domicile_policy::{Diagnostic, PackSet, PackSource};

#[derive(Debug, thiserror::Error)]
pub enum PackLoadError {
    #[error("cannot read pack directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no packs found under {0}")]
    Empty(PathBuf),
    #[error("invalid packs:\n{0}")]
    Invalid(domicile_policy::Diagnostics),
}

/// Every `<dir>/*/pack.toml`, sorted by path so diagnostics come out in a stable order.
pub fn read_sources(dir: &Path) -> Result<Vec<PackSource>, PackLoadError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PackLoadError::Io { path, source }
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let candidate = entry.path().join("pack.toml");
        if candidate.is_file() {
            paths.push(candidate);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(PackLoadError::Empty(dir.to_owned()));
    }
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            Ok(PackSource { path: path.display().to_string(), text })
        })
        .collect()
}

/// Reads and compiles every pack under `dir`; all problems are reported together.
pub fn load_dir(dir: &Path) -> Result<(PackSet, Vec<Diagnostic>), PackLoadError> {
    let sources = read_sources(dir)?;
    PackSet::compile(&sources).map_err(PackLoadError::Invalid)
}

/// The test files beside a pack: `<pack dir>/tests/*.toml`, sorted.
pub fn read_test_sources(pack_path: &Path) -> Result<Vec<PackSource>, PackLoadError> {
    let Some(tests_dir) = pack_path.parent().map(|p| p.join("tests")) else { return Ok(Vec::new()) };
    if !tests_dir.is_dir() {
        return Ok(Vec::new());
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PackLoadError::Io { path, source }
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(&tests_dir).map_err(io(&tests_dir))? {
        let path = entry.map_err(io(&tests_dir))?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            Ok(PackSource { path: path.display().to_string(), text })
        })
        .collect()
}
