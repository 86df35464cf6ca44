//! The prerequisite check of `scripts/prerequisites.sh`, judged on fake directory trees:
//! it must accept only a libclang that bindgen can load, never the C++ interface library
//! `libclang-cpp*` that Debian machines ship without libclang (the bug that made a fresh
//! machine fail after minutes of compiling).

use stagecache_tests::output_within;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("prerequisites.sh")
}

/// Runs `stagecache_find_libclang` with only `dirs` searched (no ldconfig cache, no system
/// directories) and `LIBCLANG_PATH` as given; returns what it printed, or `None` when it
/// found nothing.
fn find(dirs: &[&Path], libclang_path: Option<&Path>) -> Option<String> {
    let joined = dirs
        .iter()
        .map(|d| d.to_str().unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            ". '{}' && stagecache_find_libclang",
            script().display()
        ))
        .env("STAGECACHE_LIBCLANG_DIRS", joined)
        .env_remove("LIBCLANG_PATH");
    if let Some(p) = libclang_path {
        cmd.env("LIBCLANG_PATH", p);
    }
    let out = output_within(
        &mut cmd,
        Duration::from_secs(60),
        "stagecache_find_libclang",
    );
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match out.status.code() {
        Some(0) => {
            assert!(!stdout.is_empty(), "found, but printed nothing");
            Some(stdout)
        }
        Some(1) => {
            assert!(stdout.is_empty(), "not found, but printed {stdout:?}");
            None
        }
        other => panic!(
            "unexpected exit {other:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn tree(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        std::fs::write(dir.path().join(f), b"\x7fELF").unwrap();
    }
    dir
}

#[test]
fn only_libclang_cpp_is_not_libclang() {
    // What a fresh Debian machine of this kind has: package libclang-cpp14.
    let llvm = tree(&["libclang-cpp.so.14", "libLLVM-14.so.1"]);
    assert_eq!(find(&[llvm.path()], None), None);
    let lib = tree(&["libclang-cpp.so", "libclang-cpp.so.14.0.6"]);
    assert_eq!(find(&[llvm.path(), lib.path()], None), None);
}

#[test]
fn a_real_looking_libclang_is_found() {
    let lib = tree(&["libclang-cpp.so.14", "libclang-14.so.1"]);
    let found = find(&[lib.path()], None).expect("libclang-14.so.1 is libclang");
    assert!(found.ends_with("/libclang-14.so.1"), "{found}");
    for name in [
        "libclang.so",
        "libclang.so.14",
        "libclang-14.so",
        "libclang-14.so.13",
    ] {
        let d = tree(&[name]);
        let found = find(&[d.path()], None).unwrap_or_else(|| panic!("{name} not accepted"));
        assert!(found.ends_with(&format!("/{name}")), "{found}");
    }
    // Names that only look alike.
    for name in [
        "libclang.a",
        "libclang-cpp.so.14",
        "libclangBasic.a",
        "libclang.so.txt",
    ] {
        let d = tree(&[name]);
        assert_eq!(find(&[d.path()], None), None, "{name} accepted");
    }
}

#[test]
fn libclang_path_is_searched_first_and_judged_the_same_way() {
    let elsewhere = tree(&["libclang.so"]);
    let empty = tree(&[]);
    let found = find(&[empty.path()], Some(elsewhere.path())).expect("LIBCLANG_PATH searched");
    assert!(
        found.starts_with(elsewhere.path().to_str().unwrap()),
        "{found}"
    );
    // LIBCLANG_PATH naming a directory with only the C++ library does not count.
    let cpp_only = tree(&["libclang-cpp.so.14"]);
    assert_eq!(find(&[empty.path()], Some(cpp_only.path())), None);
    // A LIBCLANG_PATH that does not exist falls through to the other directories.
    let system = tree(&["libclang-14.so.1"]);
    let found = find(&[system.path()], Some(Path::new("/nonexistent/llvm"))).unwrap();
    assert!(found.ends_with("/libclang-14.so.1"), "{found}");
}
