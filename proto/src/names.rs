//! Names: namespaces (`prod`, `test`) and refs (`bar/12345`).

use crate::error::RuleError;
use crate::quote::{quote, thousands};
use std::fmt;

/// Longest namespace name, in bytes.
pub const MAX_NAMESPACE_BYTES: usize = 63;
/// Longest ref name, in bytes.
pub const MAX_REF_BYTES: usize = 512;

fn name_error(field: &str, value: &str, reason: impl Into<String>) -> RuleError {
    RuleError::Name {
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Checks a free-text field (actor, reason, stage name, URL...): at most `max` bytes, no
/// control characters but tab. The one rule for every text a client sends.
pub fn validate_text(field: &str, value: &str, max: usize) -> Result<(), RuleError> {
    let bad = |reason: String| RuleError::Bound {
        field: field.to_string(),
        reason,
    };
    if value.len() > max {
        return Err(bad(format!(
            "{} exceeds {} bytes",
            quote(value),
            thousands(max as u64)
        )));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(bad(format!("{} contains control characters", quote(value))));
    }
    Ok(())
}

/// Refuses a repeated field with more than `max` items:
/// `digests: 100,001 items, at most 100,000 per call`.
pub fn check_items(field: &str, len: usize, max: usize) -> Result<(), RuleError> {
    if len > max {
        return Err(RuleError::Bound {
            field: field.to_string(),
            reason: format!(
                "{} items, at most {} per call",
                thousands(len as u64),
                thousands(max as u64)
            ),
        });
    }
    Ok(())
}

/// A validated namespace: 1 to 63 characters of `a-z 0-9 . _ -`, starting with a letter
/// or digit. Namespaces isolate refs and the ledger; blobs are shared.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(String);

impl Namespace {
    pub fn parse(field: &str, value: &str) -> Result<Self, RuleError> {
        if value.is_empty() {
            return Err(name_error(
                field,
                value,
                "is empty; a namespace is required",
            ));
        }
        if value.len() > MAX_NAMESPACE_BYTES {
            return Err(name_error(
                field,
                value,
                format!("exceeds {MAX_NAMESPACE_BYTES} bytes"),
            ));
        }
        let first = value.as_bytes()[0];
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(name_error(
                field,
                value,
                "must start with a lower-case letter or digit",
            ));
        }
        if let Some(c) = value
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(*c)))
        {
            return Err(name_error(
                field,
                value,
                format!("contains {c:?}; allowed are a-z, 0-9, '.', '_' and '-'"),
            ));
        }
        Ok(Namespace(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({})", self.0)
    }
}

/// A validated ref name: '/'-separated segments of `A-Z a-z 0-9 . _ - + @ =`, no empty,
/// "." or ".." segment, at most 512 bytes. E.g. `bar/12345`, `build/67890`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RefName(String);

impl RefName {
    pub fn parse(field: &str, value: &str) -> Result<Self, RuleError> {
        if value.is_empty() {
            return Err(name_error(field, value, "is empty; a ref name is required"));
        }
        if value.len() > MAX_REF_BYTES {
            return Err(name_error(
                field,
                value,
                format!("exceeds {MAX_REF_BYTES} bytes"),
            ));
        }
        if let Some(c) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "/._-+@=".contains(*c)))
        {
            return Err(name_error(
                field,
                value,
                format!(
                    "contains {c:?}; allowed are A-Z, a-z, 0-9, '/', '.', '_', '-', '+', '@', '='"
                ),
            ));
        }
        for segment in value.split('/') {
            match segment {
                "" => return Err(name_error(field, value, "has an empty segment")),
                "." | ".." => {
                    return Err(name_error(
                        field,
                        value,
                        format!("has a {segment:?} segment"),
                    ))
                }
                _ => {}
            }
        }
        Ok(RefName(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RefName({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces() {
        for ok in ["prod", "test", "team-a.staging", "0x_1"] {
            Namespace::parse("namespace", ok).unwrap();
        }
        for bad in ["", "Prod", "-x", "a b", "a/b", &"a".repeat(64)] {
            let e = Namespace::parse("namespace", bad).unwrap_err().to_string();
            assert!(e.starts_with("namespace: "), "{e}");
        }
    }

    #[test]
    fn ref_names() {
        for ok in ["bar/12345", "build/67890", "release/8.0/rc.1", "x"] {
            RefName::parse("name", ok).unwrap();
        }
        for bad in ["", "/a", "a/", "a//b", "a/../b", "./a", "a b", "a\\b", "ä"] {
            let e = RefName::parse("name", bad).unwrap_err().to_string();
            assert!(e.starts_with("name: "), "{bad:?}: {e}");
        }
    }
}
