//! dist/: the systemd unit and its environment file. The unit must be one
//! systemd accepts (checked with `systemd-analyze verify` where it exists;
//! skipped, with a message, where it does not), every variable of the
//! environment file must be one imd reads, and the descriptor limit must
//! cover the connection limit.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use crate::support::imd_command;

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
    let help = imd_command().arg("--help").output().unwrap();
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

/// `--log-format json`: every line imd logs is one JSON object with a
/// level and a message, and events carry their fields (here the address
/// of a client that connected and left).
#[test]
fn json_logs_are_one_object_a_line() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("imd.log");
    let mut imd = imd_command()
        .args(["--ip", "127.0.0.1", "--port", "0", "--log-format", "json"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(imd.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first.trim().strip_prefix("imd listening on ").unwrap();
    let client = std::net::TcpStream::connect(addr).unwrap();
    let me = client.local_addr().unwrap().to_string();
    let mut welcome = String::new();
    BufReader::new(&client).read_line(&mut welcome).unwrap();
    drop(client);
    // SIGTERM: the graceful stop, which logs "stopped" last.
    unsafe { libc::kill(imd.id() as i32, libc::SIGTERM) };
    assert!(imd.wait().unwrap().success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for e in &events {
        assert!(
            e["level"].is_string() && e["fields"]["message"].is_string(),
            "{e}"
        );
    }
    let connected = events
        .iter()
        .find(|e| e["fields"]["message"] == "connected")
        .unwrap_or_else(|| panic!("no connect event in {log}"));
    assert_eq!(connected["fields"]["addr"], me.as_str());
    assert_eq!(events.last().unwrap()["fields"]["message"], "stopped");
}
