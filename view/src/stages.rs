//! Stage graph files (YAML), e.g. `deploy/pipelines/validate-publish.stages.yaml`:
//!
//! ```yaml
//! signing_stage: Signing Ring      # optional: the stage --force-resign forces
//! stages:
//!   - name: Required Validation
//!   - name: Required Validation Override
//!     depends_on: [Required Validation]
//!     fingerprint: v2              # optional: results under another fingerprint do not count
//! ```
//!
//! Unknown keys are errors. The server validates the graph itself (unknown dependency,
//! duplicate name, cycle); this module only reads the file.

use serde::Deserialize;
use stagecache_proto::v1::{StageDef, StageGraph};
use std::fmt;
use std::path::{Path, PathBuf};

/// A stage file that could not be read or is not a valid stage graph.
#[derive(Debug)]
pub enum StageFileError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    Invalid(String),
}

impl fmt::Display for StageFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageFileError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StageFileError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StageFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StageFileError::Io { source, .. } => Some(source),
            StageFileError::Invalid(_) => None,
        }
    }
}

/// A stage graph file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageFile {
    #[serde(default)]
    pub signing_stage: Option<String>,
    pub stages: Vec<StageEntry>,
}

/// One stage of a stage file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageEntry {
    pub name: String,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub fingerprint: String,
    /// Typical duration, e.g. `1h30m`, `50m`, `0`; used for reporting.
    #[serde(default)]
    pub duration: Option<String>,
}

impl StageFile {
    /// Reads and parses a stage file.
    pub fn load(path: &Path) -> Result<Self, StageFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| StageFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| StageFileError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Parses a stage file's text; the error says which key or stage is wrong.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let file: StageFile = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        if file.stages.is_empty() {
            return Err("stages: the graph has no stages".into());
        }
        if let Some(s) = &file.signing_stage {
            if !file.stages.iter().any(|e| &e.name == s) {
                return Err(format!("signing_stage: {s:?} is not one of the stages"));
            }
        }
        Ok(file)
    }

    /// The graph as the `Plan` call takes it.
    pub fn to_proto(&self) -> StageGraph {
        StageGraph {
            stages: self
                .stages
                .iter()
                .map(|s| StageDef {
                    name: s.name.clone(),
                    depends_on: s.depends_on.clone(),
                    fingerprint: s.fingerprint.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_unknown_keys() {
        let f = StageFile::parse(
            "signing_stage: b\nstages:\n  - name: a\n  - name: b\n    depends_on: [a]\n",
        )
        .unwrap();
        assert_eq!(f.to_proto().stages[1].depends_on, ["a"]);
        let e = StageFile::parse("stages:\n  - name: a\n    depnds_on: [x]\n").unwrap_err();
        assert!(e.contains("unknown field `depnds_on`"), "{e}");
        let e = StageFile::parse("signing_stage: z\nstages:\n  - name: a\n").unwrap_err();
        assert!(e.contains("signing_stage"), "{e}");
    }
}
