//! Path rules for manifest entries: relative, '/'-separated, no empty, "." or ".."
//! segment, no NUL or backslash, at most [`MAX_PATH_BYTES`] bytes.

use crate::error::RuleError;

/// Longest path a manifest entry may have, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// Checks one entry path; `field` names it in the error (e.g. `entries[17].path`).
pub fn validate_path(field: &str, path: &str) -> Result<(), RuleError> {
    let bad = |reason: &str| RuleError::Path {
        field: field.to_string(),
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if path.is_empty() {
        return Err(bad("is empty"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(bad(&format!(
            "exceeds {} bytes",
            crate::quote::thousands(MAX_PATH_BYTES as u64)
        )));
    }
    if path.starts_with('/') {
        return Err(bad("is absolute; paths are relative to the asset root"));
    }
    if path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if path.contains('\\') {
        return Err(bad("contains a backslash; the separator is '/'"));
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err(bad("has an empty segment")),
            "." => return Err(bad("has a \".\" segment")),
            ".." => return Err(bad("leaves the asset root (\"..\" segment)")),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for p in [
            "a",
            "a/b.nupkg",
            "dir with space/x.zip",
            "ünïcode/ok",
            "a..b/.hidden",
        ] {
            validate_path("p", p).unwrap();
        }
    }

    #[test]
    fn refuses_each_rule() {
        let cases = [
            ("", "is empty"),
            ("/abs", "absolute"),
            ("../x", "leaves the asset root"),
            ("a/../x", "leaves the asset root"),
            ("./a", "\".\" segment"),
            ("a//b", "empty segment"),
            ("a/", "empty segment"),
            ("a\\b", "backslash"),
            ("a\0b", "NUL"),
        ];
        for (p, want) in cases {
            let e = validate_path("entries[2].path", p).unwrap_err().to_string();
            assert!(e.contains(want), "{p:?}: {e}");
            assert!(e.starts_with("entries[2].path: path "), "{e}");
        }
        let long = "a".repeat(MAX_PATH_BYTES + 1);
        assert!(validate_path("p", &long).is_err());
        validate_path("p", &"a".repeat(MAX_PATH_BYTES)).unwrap();
    }
}
