//! Records what a benchmark number was built from: burn's version (from the workspace's Cargo.lock),
//! the git commit and rustc's version, as compile-time environment variables.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-changed=build.rs");

    let lock = manifest_dir.join("../../Cargo.lock");
    if lock.exists() {
        println!("cargo:rerun-if-changed={}", lock.display());
    }
    let burn = std::fs::read_to_string(&lock).ok().and_then(|text| locked_version(&text, "burn"));
    println!("cargo:rustc-env=POLARITY_BENCH_BURN_VERSION={}", burn.as_deref().unwrap_or("unknown"));

    let commit = git(&manifest_dir, &["rev-parse", "--short", "HEAD"]);
    println!("cargo:rustc-env=POLARITY_BENCH_GIT_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
    // Rebuild when HEAD moves: HEAD itself (a worktree's lives under the main repository's .git) and the
    // branch it names. A path that does not exist would make cargo rerun this script on every build.
    let mut watched = vec!["HEAD".to_string()];
    if let Some(branch) = git(&manifest_dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
        watched.push("packed-refs".to_string());
    }
    for name in watched {
        if let Some(path) = git(&manifest_dir, &["rev-parse", "--git-path", &name]) {
            let path = manifest_dir.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }

    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let rustc_version = Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|version| version.trim().to_string());
    println!("cargo:rustc-env=POLARITY_BENCH_RUSTC_VERSION={}", rustc_version.as_deref().unwrap_or("unknown"));
}

/// The trimmed stdout of `git args` run in `dir`, `None` when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).current_dir(dir).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (output.status.success() && !text.is_empty()).then_some(text)
}

/// The version of the `[[package]]` named `name` in a Cargo.lock (the first, should there be several).
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    for package in lock.split("[[package]]").skip(1) {
        let mut lines = package.lines().map(str::trim);
        if lines.clone().any(|line| line == wanted) {
            let version = lines.find_map(|line| line.strip_prefix("version = "))?;
            return Some(version.trim_matches('"').to_string());
        }
    }
    None
}
