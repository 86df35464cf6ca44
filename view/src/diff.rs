//! What changed between two manifests: files added, removed and changed (content or
//! executable bit), with sizes and digests, and totals. `stagecache diff` prints it as a
//! table or JSON; the web page draws it as an HTML table.

use serde_json::json;
use stagecache_proto::{Digest, Manifest, ManifestEntry};

/// How one path differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Removed,
    /// Same path, other content and/or executable bit.
    Changed,
}

impl Change {
    /// `added`, `removed`, `changed`: the word in JSON, the table and the page's classes.
    pub fn word(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
        }
    }
}

/// One path that differs; `old` is absent for an added file, `new` for a removed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDiff {
    pub change: Change,
    pub path: String,
    pub old: Option<(Digest, bool)>,
    pub new: Option<(Digest, bool)>,
}

impl FileDiff {
    pub fn old_size(&self) -> Option<u64> {
        self.old.map(|(d, _)| d.size())
    }

    pub fn new_size(&self) -> Option<u64> {
        self.new.map(|(d, _)| d.size())
    }

    /// Whether the content differs (a changed file may differ only in its executable bit).
    pub fn content_changed(&self) -> bool {
        match (self.old, self.new) {
            (Some((a, _)), Some((b, _))) => a != b,
            _ => true,
        }
    }

    /// `Some((old, new))` when the executable bit differs between two versions of a path.
    pub fn executable_change(&self) -> Option<(bool, bool)> {
        match (self.old, self.new) {
            (Some((_, a)), Some((_, b))) if a != b => Some((a, b)),
            _ => None,
        }
    }
}

/// The difference between an old and a new manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestDiff {
    pub old: Digest,
    pub new: Digest,
    /// Paths that differ, in path order.
    pub files: Vec<FileDiff>,
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    pub unchanged: usize,
    pub old_files: usize,
    pub new_files: usize,
    pub old_bytes: u64,
    pub new_bytes: u64,
}

impl ManifestDiff {
    /// Whether the two manifests hold the same files.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The JSON `stagecache diff --json` prints.
    pub fn to_json(&self) -> serde_json::Value {
        let files: Vec<_> = self
            .files
            .iter()
            .map(|f| {
                json!({
                    "change": f.change.word(),
                    "path": f.path,
                    "old_size": f.old_size(),
                    "new_size": f.new_size(),
                    "old_digest": f.old.map(|(d, _)| d.to_string()),
                    "new_digest": f.new.map(|(d, _)| d.to_string()),
                    "old_executable": f.old.map(|(_, x)| x),
                    "new_executable": f.new.map(|(_, x)| x),
                })
            })
            .collect();
        json!({
            "old": self.old.to_string(),
            "new": self.new.to_string(),
            "identical": self.is_empty(),
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "old_files": self.old_files,
            "new_files": self.new_files,
            "old_bytes": self.old_bytes,
            "new_bytes": self.new_bytes,
            "files": files,
        })
    }

    /// A table for people: one row per path that differs, then the totals.
    pub fn table(&self) -> String {
        let mut out = format!("--- {}\n+++ {}\n", self.old, self.new);
        if !self.files.is_empty() {
            out.push_str(&format!(
                "{:<8} {:>14} {:>14}  path\n",
                "change", "old size", "new size"
            ));
        }
        let size = |s: Option<u64>| s.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
        for f in &self.files {
            let mut note = String::new();
            if let Some((a, b)) = f.executable_change() {
                note = format!(
                    "  (executable {} -> {})",
                    if a { "yes" } else { "no" },
                    if b { "yes" } else { "no" }
                );
            }
            out.push_str(&format!(
                "{:<8} {:>14} {:>14}  {}{note}\n",
                f.change.word(),
                size(f.old_size()),
                size(f.new_size()),
                f.path
            ));
        }
        out.push_str(&format!(
            "{} added, {} removed, {} changed, {} unchanged; {} -> {} files, {} -> {} bytes\n",
            self.added,
            self.removed,
            self.changed,
            self.unchanged,
            self.old_files,
            self.new_files,
            self.old_bytes,
            self.new_bytes
        ));
        out
    }
}

/// Compares two manifests by path (both are sorted by path, so one merge pass).
pub fn diff_manifests(old: &Manifest, new: &Manifest) -> ManifestDiff {
    let (a, b) = (old.entries(), new.entries());
    let (mut i, mut j) = (0, 0);
    let mut files = Vec::new();
    let mut unchanged = 0;
    let side = |e: &ManifestEntry| Some((e.digest, e.executable));
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.path.as_bytes().cmp(y.path.as_bytes()),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                files.push(FileDiff {
                    change: Change::Removed,
                    path: a[i].path.clone(),
                    old: side(&a[i]),
                    new: None,
                });
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                files.push(FileDiff {
                    change: Change::Added,
                    path: b[j].path.clone(),
                    old: None,
                    new: side(&b[j]),
                });
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if a[i].digest != b[j].digest || a[i].executable != b[j].executable {
                    files.push(FileDiff {
                        change: Change::Changed,
                        path: a[i].path.clone(),
                        old: side(&a[i]),
                        new: side(&b[j]),
                    });
                } else {
                    unchanged += 1;
                }
                i += 1;
                j += 1;
            }
        }
    }
    let count = |c: Change| files.iter().filter(|f| f.change == c).count();
    ManifestDiff {
        old: old.digest(),
        new: new.digest(),
        added: count(Change::Added),
        removed: count(Change::Removed),
        changed: count(Change::Changed),
        unchanged,
        old_files: a.len(),
        new_files: b.len(),
        old_bytes: old.total_bytes(),
        new_bytes: new.total_bytes(),
        files,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, content: &[u8], executable: bool) -> ManifestEntry {
        ManifestEntry {
            path: path.into(),
            digest: Digest::of_bytes(content),
            executable,
        }
    }

    #[test]
    fn finds_added_removed_changed_and_executable_changes() {
        let old = Manifest::from_entries(vec![
            entry("a.nupkg", b"a1", false),
            entry("b/run.sh", b"run", false),
            entry("gone.txt", b"bye", false),
            entry("same.txt", b"same", false),
        ])
        .unwrap();
        let new = Manifest::from_entries(vec![
            entry("a.nupkg", b"a2-longer", false),
            entry("b/run.sh", b"run", true),
            entry("new.zip", b"fresh", false),
            entry("same.txt", b"same", false),
        ])
        .unwrap();
        let d = diff_manifests(&old, &new);
        let got: Vec<(&str, Change)> = d.files.iter().map(|f| (&*f.path, f.change)).collect();
        assert_eq!(
            got,
            [
                ("a.nupkg", Change::Changed),
                ("b/run.sh", Change::Changed),
                ("gone.txt", Change::Removed),
                ("new.zip", Change::Added),
            ]
        );
        assert_eq!((d.added, d.removed, d.changed, d.unchanged), (1, 1, 2, 1));
        assert_eq!(
            (d.files[0].old_size(), d.files[0].new_size()),
            (Some(2), Some(9))
        );
        assert!(d.files[0].content_changed());
        assert_eq!(d.files[1].executable_change(), Some((false, true)));
        assert!(!d.files[1].content_changed());
        assert_eq!((d.old_bytes, d.new_bytes), (2 + 3 + 3 + 4, 9 + 3 + 5 + 4));
        let table = d.table();
        assert!(table.contains("(executable no -> yes)"), "{table}");
        assert!(
            table.contains("1 added, 1 removed, 2 changed, 1 unchanged"),
            "{table}"
        );
        let j = d.to_json();
        assert_eq!(j["files"][2]["change"], "removed");
        assert_eq!(j["files"][2]["new_size"], serde_json::Value::Null);
        assert_eq!(
            j["files"][3]["new_digest"],
            Digest::of_bytes(b"fresh").to_string()
        );
        assert_eq!(j["identical"], false);
    }

    #[test]
    fn identical_and_empty_manifests_have_no_rows() {
        let m = Manifest::from_entries(vec![entry("x", b"x", false)]).unwrap();
        let d = diff_manifests(&m, &m);
        assert!(d.is_empty());
        assert_eq!(d.unchanged, 1);
        let empty = Manifest::from_entries(vec![]).unwrap();
        let d = diff_manifests(&empty, &m);
        assert_eq!((d.added, d.old_files, d.new_files), (1, 0, 1));
    }
}
