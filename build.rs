//! Stamps the binary with the commit it was built from and the build date (for `--version`).

fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!(
        "cargo:rustc-env=RINGGATE_COMMIT={commit}{}",
        if dirty { "-dirty" } else { "" }
    );
    println!("cargo:rustc-env=RINGGATE_BUILD_DATE={date}");
    // Not on .git/index: a new commit would then rebuild every target of the crate (tests
    // included). A fresh clone (CI, `cargo install`) stamps the right commit; a work tree
    // stamps the one it was first built at until build.rs or HEAD's branch changes.
    println!("cargo:rerun-if-changed=.git/HEAD");
}
