//! Output formats of the CLI: human text, JSON, and step outputs that CI systems read —
//! Azure Pipelines logging commands (`##vso[task.setvariable ...;isOutput=true]`) and
//! GitHub Actions' `$GITHUB_OUTPUT` file.

use crate::error::{ClientError, Result};
use std::io::Write;
use std::path::Path;

/// How a command reports its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Text for people on stdout.
    Human,
    /// One JSON document on stdout.
    Json,
    /// `##vso[task.setvariable variable=NAME;isOutput=true]VALUE` lines on stdout.
    AzurePipelines,
    /// `NAME=VALUE` lines appended to the file named by `$GITHUB_OUTPUT`; text on stdout.
    GithubActions,
}

/// A variable name for a stage: `run_` + the name in lower case with every run of other
/// characters than letters and digits turned into one `_`.
/// `variable_name("run", "Publish Signed Assets")` is `run_publish_signed_assets`.
pub fn variable_name(prefix: &str, stage: &str) -> String {
    let mut out = String::from(prefix);
    out.push('_');
    let mut gap = false;
    for c in stage.chars() {
        if c.is_ascii_alphanumeric() {
            if gap && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            gap = false;
        } else {
            gap = true;
        }
    }
    out
}

/// Escapes a value for an Azure Pipelines logging command.
fn azure_escape(value: &str) -> String {
    value
        .replace('%', "%AZP25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
        .replace(';', "%3B")
        .replace(']', "%5D")
}

/// `##vso[task.setvariable variable=NAME;isOutput=true]VALUE`
pub fn azure_line(name: &str, value: &str) -> String {
    format!(
        "##vso[task.setvariable variable={};isOutput=true]{}",
        azure_escape(name),
        azure_escape(value)
    )
}

/// The lines to append to `$GITHUB_OUTPUT`: `NAME=VALUE`, or a heredoc for multi-line values.
pub fn github_lines(vars: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in vars {
        if v.contains('\n') {
            let delimiter = format!("stagecache_{}", uuid::Uuid::new_v4().simple());
            out.push_str(&format!("{k}<<{delimiter}\n{v}\n{delimiter}\n"));
        } else {
            out.push_str(&format!("{k}={v}\n"));
        }
    }
    out
}

/// What a command has to say, in every format.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub human: String,
    pub json: serde_json::Value,
    pub vars: Vec<(String, String)>,
}

impl Report {
    pub fn var(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.vars.push((name.into(), value.into()));
    }

    /// Writes the report in `format`. `github_output` is `$GITHUB_OUTPUT`.
    pub fn emit(&self, format: Format, github_output: Option<&Path>) -> Result<()> {
        let mut stdout = std::io::stdout().lock();
        let io = |e| ClientError::io("stdout", e);
        match format {
            Format::Human => {
                if !self.human.is_empty() {
                    writeln!(stdout, "{}", self.human.trim_end()).map_err(io)?;
                }
            }
            Format::Json => writeln!(stdout, "{}", self.json).map_err(io)?,
            Format::AzurePipelines => {
                for (k, v) in &self.vars {
                    writeln!(stdout, "{}", azure_line(k, v)).map_err(io)?;
                }
            }
            Format::GithubActions => {
                let path = github_output.ok_or_else(|| {
                    ClientError::Invalid(
                        "--format github-actions: GITHUB_OUTPUT is not set (run inside a GitHub Actions step)".into(),
                    )
                })?;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| ClientError::io(path, e))?;
                f.write_all(github_lines(&self.vars).as_bytes())
                    .map_err(|e| ClientError::io(path, e))?;
                if !self.human.is_empty() {
                    writeln!(stdout, "{}", self.human.trim_end()).map_err(io)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_lines() {
        assert_eq!(
            variable_name("run", "Publish Signed Assets"),
            "run_publish_signed_assets"
        );
        assert_eq!(
            variable_name("run", "Sign-off For Finalizing"),
            "run_sign_off_for_finalizing"
        );
        assert_eq!(
            variable_name("run", "Publish Post-Signing Assets"),
            "run_publish_post_signing_assets"
        );
        assert_eq!(
            azure_line("manifest", "ab/12"),
            "##vso[task.setvariable variable=manifest;isOutput=true]ab/12"
        );
        assert_eq!(
            azure_line("x", "a;b]c\nd%"),
            "##vso[task.setvariable variable=x;isOutput=true]a%3Bb%5Dc%0Ad%AZP25"
        );
        let g = github_lines(&[("a".into(), "1".into()), ("b".into(), "x\ny".into())]);
        assert!(g.starts_with("a=1\nb<<stagecache_"), "{g}");
        assert!(g.contains("\nx\ny\nstagecache_"), "{g}");
    }
}
