//! The pipeline templates and stage files in `deploy/` are valid YAML, and every
//! `stagecache ...` command line in them parses with the real CLI definition.

use clap::Parser;
use stagecache_client::cli::Cli;
use std::path::{Path, PathBuf};

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")) {
            out.push(p);
        }
    }
}

fn strings(v: &serde_norway::Value, out: &mut Vec<String>) {
    match v {
        serde_norway::Value::String(s) => out.push(s.clone()),
        serde_norway::Value::Sequence(items) => items.iter().for_each(|i| strings(i, out)),
        serde_norway::Value::Mapping(m) => m.iter().for_each(|(k, v)| {
            strings(k, out);
            strings(v, out);
        }),
        serde_norway::Value::Tagged(t) => strings(&t.value, out),
        _ => {}
    }
}

/// Shell-like words: quotes group, `${{ ... }}` expressions are one word. The flag says
/// whether the word was quoted (a quoted expression is a value, not inserted flags).
fn words(line: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    let mut started = false;
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '$') if chars.peek() == Some(&'{') => {
                // ${{ ... }} until the closing braces, spaces included.
                cur.push(c);
                let mut depth = 0;
                for d in chars.by_ref() {
                    cur.push(d);
                    if d == '{' {
                        depth += 1;
                    } else if d == '}' {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                }
                started = true;
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                started = true;
                quoted = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if started {
                    out.push((std::mem::take(&mut cur), quoted));
                    started = false;
                    quoted = false;
                }
            }
            (_, c) => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push((cur, quoted));
    }
    out
}

fn placeholder(flag: &str) -> String {
    match flag {
        "--manifest" | "--subject" | "--outputs" | "--expect" => format!("{}/1", "ab".repeat(32)),
        "--ttl" | "--timeout" | "--attempt" | "--limit" | "--concurrency" | "--rpc-timeout" => {
            "60".into()
        }
        "--status" => "succeeded".into(),
        "--format" => "json".into(),
        _ => "x".into(),
    }
}

/// What a script adds to its `args` array (`args+=(--only "...")`), group by group: the
/// words a command line's `"${args[@]}"` stands for.
fn args_groups(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = script;
    while let Some(i) = rest.find("args+=(") {
        let body = &rest[i + "args+=(".len()..];
        let mut depth = 1;
        let end = body
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(j, _)| j)
            .unwrap_or_else(|| panic!("unclosed args+=( in {script}"));
        out.push(body[..end].to_string());
        rest = &body[end..];
    }
    out
}

/// Arguments of one command line, with CI expressions replaced by values of the right kind
/// and `"${args[@]}"` by every group the script adds to `args` (all at once: the line
/// must parse with each flag the script can insert).
fn arguments(line: &str, args_added: &[String]) -> Vec<String> {
    let line = line.split(" || ").next().unwrap_or(line);
    let mut args: Vec<String> = Vec::new();
    for (w, quoted) in words(line) {
        if w == "${args[@]}" {
            assert!(
                !args_added.is_empty(),
                "{line}: uses ${{args[@]}}, but nothing adds to args"
            );
            for group in args_added {
                args.extend(arguments(group, &[]));
            }
            continue;
        }
        let dynamic = w.contains("${{") || w.contains("$(") || w.starts_with('$');
        let prev_is_flag = args.last().is_some_and(|p| {
            p.starts_with("--")
                && !matches!(p.as_str(), "--json" | "--force-resign" | "--expect-absent")
        });
        if dynamic && prev_is_flag {
            let flag = args.last().cloned().unwrap_or_default();
            args.push(placeholder(&flag));
        } else if w.starts_with("${{") && !quoted {
            // A conditional expression that inserts flags: check the flags it can insert.
            for quoted in w.split('\'').skip(1).step_by(2) {
                if quoted.starts_with("--") {
                    args.extend(arguments(&quoted.replace("{0}", "x"), &[]));
                }
            }
        } else if dynamic {
            args.push("x".into());
        } else {
            args.push(w);
        }
    }
    args
}

#[test]
fn templates_are_yaml_and_call_only_existing_commands() {
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut files = Vec::new();
    yaml_files(&deploy, &mut files);
    assert!(files.len() >= 10, "{files:?}");
    let mut checked = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let mut values = Vec::new();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = <serde_norway::Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", f.display()));
            strings(&v, &mut values);
        }
        for s in values {
            let added = args_groups(&s);
            for line in s.lines() {
                let line = line.trim();
                if !line.starts_with("stagecache ") {
                    continue;
                }
                let mut argv = vec!["stagecache".to_string()];
                argv.extend(arguments(&line["stagecache ".len()..], &added));
                if let Err(e) = Cli::try_parse_from(&argv) {
                    panic!("{}: {line}\n  parsed as {argv:?}\n  {e}", f.display());
                }
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 15,
        "only {checked} stagecache command lines found"
    );
}

#[test]
fn the_checker_catches_unknown_flags_and_commands() {
    for bad in [
        "plan --ref bar/1 --stages f --no-such-flag",
        "publish --ref bar/1",
        "record --ref bar/1 --stage S --status done",
        "--format yaml status --ref bar/1",
    ] {
        let mut argv = vec!["stagecache".to_string()];
        argv.extend(arguments(bad, &[]));
        assert!(
            Cli::try_parse_from(&argv).is_err(),
            "{bad} should not parse"
        );
    }
    assert_eq!(
        arguments(
            r#"claim --ref "bar/${{ inputs.id }}" --ttl ${{ parameters.ttl }} || test $? = 7"#,
            &[]
        ),
        ["claim", "--ref", "x", "--ttl", "60"]
    );
    // Flags a script adds to `args` are parsed where "${args[@]}" inserts them.
    let script = r#"args=()
if [ -n "$S" ]; then args+=(--only "$S"); fi
if [ "$F" = "True" ]; then args+=(--force-resign --reason "by $(Build.RequestedFor)"); fi
stagecache plan --ref bar/1 --stages f "${args[@]}""#;
    let added = args_groups(script);
    assert_eq!(
        added,
        [
            r#"--only "$S""#,
            r#"--force-resign --reason "by $(Build.RequestedFor)""#
        ]
    );
    assert_eq!(
        arguments(r#"plan --ref bar/1 "${args[@]}""#, &added),
        [
            "plan",
            "--ref",
            "bar/1",
            "--only",
            "x",
            "--force-resign",
            "--reason",
            "x"
        ]
    );
    let bad = args_groups(r#"args+=(--no-such-flag)"#);
    let mut argv = vec!["stagecache".to_string()];
    argv.extend(arguments(
        r#"plan --ref bar/1 --stages f "${args[@]}""#,
        &bad,
    ));
    assert!(
        Cli::try_parse_from(&argv).is_err(),
        "{argv:?} should not parse"
    );
}
