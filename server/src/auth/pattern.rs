//! Glob patterns for namespaces and claim values: `*` matches any run of characters
//! (including none), everything else matches itself. `prod`, `test*`, `*`,
//! `repo:dotnet/arcade:environment:*`.

/// Whether `value` matches `pattern`.
pub fn matches(pattern: &str, value: &str) -> bool {
    let p = pattern.as_bytes();
    let v = value.as_bytes();
    // Iterative matching with one backtrack point: linear-ish, no recursion.
    let (mut pi, mut vi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while vi < v.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = vi;
            pi += 1;
        } else if pi < p.len() && p[pi] == v[vi] {
            pi += 1;
            vi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            vi = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs() {
        for (p, v, want) in [
            ("prod", "prod", true),
            ("prod", "prod2", false),
            ("prod", "pro", false),
            ("*", "", true),
            ("*", "anything", true),
            ("test*", "test", true),
            ("test*", "test-pr-17", true),
            ("test*", "prod", false),
            (
                "*:environment:release",
                "repo:a/b:environment:release",
                true,
            ),
            (
                "*:environment:release",
                "repo:a/b:environment:release2",
                false,
            ),
            (
                "repo:dotnet/*:ref:refs/heads/main",
                "repo:dotnet/arcade:ref:refs/heads/main",
                true,
            ),
            (
                "repo:dotnet/*:ref:refs/heads/main",
                "repo:evil/x:ref:refs/heads/main/x",
                false,
            ),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(matches(p, v), want, "{p:?} vs {v:?}");
        }
    }
}
