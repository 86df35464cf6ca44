//! Manifests: the asset set as a sorted list of (path, digest, executable) entries, its
//! canonical encoding and the digest of that encoding.
//!
//! Canonical encoding (version 1), all integers little-endian:
//! ```text
//! "stagecache-manifest-v1\n"
//! u64 entry count
//! per entry: u32 path length, path bytes (UTF-8), 32 hash bytes, u64 size, u8 flags
//!            (bit 0: executable; other bits zero)
//! ```
//! The manifest digest is the BLAKE3 [`Digest`] of these bytes. Entries are validated and
//! must be unique and sorted bytewise by path, so one asset set has exactly one encoding.

use crate::digest::Digest;
use crate::error::RuleError;
use crate::path::validate_path;
use crate::quote::quote;
use crate::v1;
use std::collections::HashSet;

const MAGIC: &[u8] = b"stagecache-manifest-v1\n";
const FLAG_EXECUTABLE: u8 = 1;

/// One file of an asset set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub path: String,
    pub digest: Digest,
    pub executable: bool,
}

/// A validated asset set: entries unique and sorted bytewise by path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// Validates entries exactly as given: every path must pass the path rules, and the
    /// list must already be sorted bytewise and free of duplicates.
    pub fn from_sorted(entries: Vec<ManifestEntry>) -> Result<Self, RuleError> {
        crate::names::check_items("entries", entries.len(), crate::MAX_MANIFEST_ENTRIES)?;
        if entries
            .iter()
            .try_fold(0u64, |sum, e| sum.checked_add(e.digest.size()))
            .is_none()
        {
            return Err(RuleError::Bound {
                field: "entries".into(),
                reason: "sizes add up to more than 2^64 - 1 bytes".into(),
            });
        }
        for (i, e) in entries.iter().enumerate() {
            validate_path(&format!("entries[{i}].path"), &e.path)?;
        }
        for (i, pair) in entries.windows(2).enumerate() {
            let (a, b) = (&pair[0].path, &pair[1].path);
            match a.as_bytes().cmp(b.as_bytes()) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => {
                    return Err(RuleError::Order {
                        field: format!("entries[{}].path", i + 1),
                        reason: format!("path {} is a duplicate of entries[{i}]", quote(b)),
                    })
                }
                std::cmp::Ordering::Greater => {
                    return Err(RuleError::Order {
                        field: format!("entries[{}].path", i + 1),
                        reason: format!(
                            "path {} sorts before entries[{i}] path {}; entries must be sorted bytewise by path",
                            quote(b),
                            quote(a)
                        ),
                    })
                }
            }
        }
        // A path cannot be both a file and a directory of other files.
        let files: HashSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        for (i, e) in entries.iter().enumerate() {
            let mut rest = e.path.as_str();
            while let Some((parent, _)) = rest.rsplit_once('/') {
                if files.contains(parent) {
                    return Err(RuleError::Path {
                        field: format!("entries[{i}].path"),
                        path: e.path.clone(),
                        reason: format!(
                            "lies inside {}, which is itself a file entry",
                            quote(parent)
                        ),
                    });
                }
                rest = parent;
            }
        }
        Ok(Manifest { entries })
    }

    /// Sorts entries bytewise by path, then validates them as [`Manifest::from_sorted`].
    pub fn from_entries(mut entries: Vec<ManifestEntry>) -> Result<Self, RuleError> {
        entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        Self::from_sorted(entries)
    }

    /// Validates a wire manifest; errors name the entry (`entries[17].path: ...`).
    pub fn from_proto(m: &v1::Manifest) -> Result<Self, RuleError> {
        let mut entries = Vec::with_capacity(m.entries.len());
        for (i, e) in m.entries.iter().enumerate() {
            let digest =
                Digest::from_required_in(|| format!("entries[{i}].digest"), e.digest.as_ref())?;
            entries.push(ManifestEntry {
                path: e.path.clone(),
                digest,
                executable: e.executable,
            });
        }
        Self::from_sorted(entries)
    }

    pub fn to_proto(&self) -> v1::Manifest {
        v1::Manifest {
            entries: self
                .entries
                .iter()
                .map(|e| v1::ManifestEntry {
                    path: e.path.clone(),
                    digest: Some(e.digest.to_proto()),
                    executable: e.executable,
                })
                .collect(),
        }
    }

    pub fn entries(&self) -> &[ManifestEntry] {
        &self.entries
    }

    /// Sum of the sizes of all entries (validation guarantees it fits in a u64).
    pub fn total_bytes(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.digest.size()))
    }

    /// The canonical encoding described in the module documentation.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let per_entry: usize = self.entries.iter().map(|e| e.path.len() + 45).sum();
        let mut out = Vec::with_capacity(MAGIC.len() + 8 + per_entry);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&(e.path.len() as u32).to_le_bytes());
            out.extend_from_slice(e.path.as_bytes());
            out.extend_from_slice(e.digest.hash());
            out.extend_from_slice(&e.digest.size().to_le_bytes());
            out.push(if e.executable { FLAG_EXECUTABLE } else { 0 });
        }
        out
    }

    /// The manifest's identity: the digest of its canonical encoding.
    pub fn digest(&self) -> Digest {
        Digest::of_bytes(&self.canonical_bytes())
    }

    /// Decodes and re-validates a canonical encoding.
    pub fn from_canonical_bytes(bytes: &[u8]) -> Result<Self, RuleError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(MAGIC.len())? != MAGIC {
            return Err(RuleError::Encoding(
                "does not start with the stagecache-manifest-v1 header".into(),
            ));
        }
        let count = u64::from_le_bytes(r.array()?);
        // Each entry takes at least 46 bytes: never trust a count the bytes cannot hold.
        if count > (bytes.len() as u64) / 46 {
            return Err(RuleError::Encoding(format!(
                "claims {count} entries in {} bytes",
                bytes.len()
            )));
        }
        let mut entries = Vec::with_capacity(count as usize);
        for i in 0..count {
            let len = u32::from_le_bytes(r.array()?) as usize;
            let path = std::str::from_utf8(r.take(len)?)
                .map_err(|_| RuleError::Encoding(format!("entry {i}: path is not UTF-8")))?
                .to_string();
            let hash: [u8; 32] = r.array()?;
            let size = u64::from_le_bytes(r.array()?);
            let flags = r.take(1)?[0];
            if flags & !FLAG_EXECUTABLE != 0 {
                return Err(RuleError::Encoding(format!(
                    "entry {i}: unknown flags {flags:#04x}"
                )));
            }
            entries.push(ManifestEntry {
                path,
                digest: Digest::new(hash, size),
                executable: flags & FLAG_EXECUTABLE != 0,
            });
        }
        if r.at != bytes.len() {
            return Err(RuleError::Encoding(format!(
                "{} trailing bytes after the last entry",
                bytes.len() - r.at
            )));
        }
        Self::from_sorted(entries)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RuleError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| RuleError::Encoding(format!("truncated at byte {}", self.at)))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RuleError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, data: &[u8]) -> ManifestEntry {
        ManifestEntry {
            path: path.into(),
            digest: Digest::of_bytes(data),
            executable: false,
        }
    }

    #[test]
    fn canonical_round_trip_and_stable_digest() {
        let m = Manifest::from_entries(vec![
            entry("b/x", b"2"),
            ManifestEntry {
                executable: true,
                ..entry("a", b"1")
            },
            entry("b/y", b""),
        ])
        .unwrap();
        assert_eq!(m.entries()[0].path, "a");
        let bytes = m.canonical_bytes();
        let back = Manifest::from_canonical_bytes(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.digest(), m.digest());
        assert_eq!(m.digest().size(), bytes.len() as u64);
        // Changing the executable bit changes the identity.
        let mut other = m.entries().to_vec();
        other[0].executable = false;
        assert_ne!(Manifest::from_sorted(other).unwrap().digest(), m.digest());
    }

    #[test]
    fn refuses_unsorted_duplicates_and_nesting() {
        let e = Manifest::from_sorted(vec![entry("b", b""), entry("a", b"")]).unwrap_err();
        assert!(
            e.to_string()
                .contains("entries[1].path: path \"a\" sorts before"),
            "{e}"
        );
        let e = Manifest::from_sorted(vec![entry("a", b""), entry("a", b"x")]).unwrap_err();
        assert!(e.to_string().contains("duplicate of entries[0]"), "{e}");
        let e = Manifest::from_entries(vec![entry("a", b""), entry("a/b", b"")]).unwrap_err();
        assert!(e.to_string().contains("is itself a file entry"), "{e}");
        let e = Manifest::from_sorted(vec![entry("ok", b""), entry("../x", b"")]).unwrap_err();
        assert!(
            e.to_string().starts_with("entries[1].path: path \"../x\""),
            "{e}"
        );
    }

    #[test]
    fn refuses_corrupt_encodings() {
        let m = Manifest::from_entries(vec![entry("a", b"1")]).unwrap();
        let bytes = m.canonical_bytes();
        assert!(Manifest::from_canonical_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Manifest::from_canonical_bytes(&extra).is_err());
        let mut huge = bytes.clone();
        huge[MAGIC.len()..MAGIC.len() + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Manifest::from_canonical_bytes(&huge).is_err());
    }
}
