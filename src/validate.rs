//! `check --validate-only`: validates task specs (files, or the `*.json` of directories)
//! without calling a model or touching the repository — what the pre-commit hooks run.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The outcome for every spec looked at; `status` is `error` when any is invalid.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ValidationReport {
    pub status: String,
    pub specs: Vec<SpecCheck>,
}

/// One spec file.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SpecCheck {
    pub path: PathBuf,
    pub valid: bool,
    pub task_id: Option<String>,
    /// The spec error, naming the file and the field, when it is invalid.
    pub error: Option<String>,
}

impl ValidationReport {
    pub fn valid(&self) -> bool {
        self.specs.iter().all(|spec| spec.valid)
    }
}

/// Validates each spec named, a directory standing for the `*.json` files directly in it.
/// A path that does not exist, or a directory without specs, is an error.
pub fn validate(paths: &[PathBuf]) -> Result<ValidationReport> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let found = specs_in(path)?;
            if found.is_empty() {
                return Err(Error::Usage(format!(
                    "{}: the directory holds no `*.json` task specs",
                    path.display()
                )));
            }
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let specs: Vec<SpecCheck> = files
        .into_iter()
        .map(|path| match crate::spec::load(&path) {
            Ok(spec) => SpecCheck {
                task_id: Some(spec.task_id.clone()),
                path,
                valid: true,
                error: None,
            },
            Err(error) => SpecCheck {
                task_id: crate::spec::peek_task_id(&path),
                path,
                valid: false,
                error: Some(error.to_string()),
            },
        })
        .collect();
    let status = if specs.iter().all(|s| s.valid) {
        "ok"
    } else {
        "error"
    };
    Ok(ValidationReport {
        status: status.to_owned(),
        specs,
    })
}

/// The `*.json` files directly in `dir`, sorted.
fn specs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|error| Error::io("list", dir, error))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| Error::io("list", dir, error))?;
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "json") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
