//! dist/: the systemd unit and its environment file. The unit must be one
//! systemd accepts (checked with `systemd-analyze verify` where it exists;
//! skipped, with a message, where it does not), every variable of the
//! environment file must be one imd reads, and the descriptor limit must
//! cover the connection limit.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

fn dist(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dist")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `KEY=VALUE` lines of a systemd-style file, comments skipped.
fn assignments(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Every variable in dist/imd.env is an environment variable `imd --help`
/// documents (or RUST_LOG), so a typo cannot silently do nothing.
#[test]
fn the_environment_file_sets_only_what_imd_reads() {
    let help = Command::new(assert_cmd::cargo::cargo_bin("imd"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let env = assignments(&dist("imd.env"));
    assert!(env.contains_key("IMD_MAX_CONNECTIONS"), "{env:?}");
    for key in env.keys().filter(|k| *k != "RUST_LOG") {
        assert!(
            help.contains(&format!("[env: {key}=")),
            "dist/imd.env sets {key}, which imd does not read"
        );
    }
}

/// The unit runs imd as a non-root user, restarts it on failure, stops it
/// with SIGTERM (its graceful stop) and gives it a descriptor per allowed
/// connection.
#[test]
fn the_unit_matches_how_imd_runs() {
    let unit = assignments(&dist("imd.service"));
    let env = assignments(&dist("imd.env"));
    assert_eq!(unit.get("DynamicUser").map(String::as_str), Some("yes"));
    assert_eq!(unit.get("Restart").map(String::as_str), Some("on-failure"));
    assert_eq!(unit.get("KillSignal").map(String::as_str), Some("SIGTERM"));
    let nofile: u64 = unit["LimitNOFILE"].parse().unwrap();
    let max: u64 = env["IMD_MAX_CONNECTIONS"].parse().unwrap();
    assert!(
        nofile >= max + 16,
        "LimitNOFILE={nofile} leaves no room above IMD_MAX_CONNECTIONS={max}"
    );
    // Graceful stop: the shutdown grace (5 s) twice, as the server allows.
    let stop: u64 = unit["TimeoutStopSec"].parse().unwrap();
    assert!(
        stop >= 10,
        "TimeoutStopSec={stop} cuts the graceful stop short"
    );
}

/// systemd itself accepts the unit: no unknown keys, no bad values, an
/// executable ExecStart (pointed at the imd just built).
#[test]
fn systemd_accepts_the_unit() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(version.status.success());
    let dir = tempfile::tempdir().unwrap();
    let imd = assert_cmd::cargo::cargo_bin("imd");
    let env_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/imd.env");
    let unit = dist("imd.service")
        .replace(
            "ExecStart=/usr/local/bin/imd",
            &format!("ExecStart={}", imd.display()),
        )
        .replace(
            "EnvironmentFile=/etc/imd/imd.env",
            &format!("EnvironmentFile={}", env_file.display()),
        );
    let path = dir.path().join("imd.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}
