//! Counting the server's write system calls with `perf stat` during the
//! measured phase, where perf is there and allowed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// `perf stat` counting the server's write system calls.
///
/// `perf stat -p` counts the threads the process has when perf attaches;
/// threads started later (a Go runtime may add some) are not counted, so
/// [`Perf::stop`] says when the thread count grew meanwhile.
pub(super) struct Perf {
    pub(super) child: std::process::Child,
    pub(super) pid: u32,
    pub(super) threads: Option<usize>,
}

/// How many threads process `pid` has now.
pub(super) fn thread_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.count())
}

/// The system calls that send bytes to a socket.
pub(super) const WRITE_CALLS: [&str; 4] = ["write", "writev", "sendto", "sendmsg"];

impl Perf {
    /// Starts `perf stat -p PID` on the write system calls and gives it a
    /// moment to attach; `Err` says why it cannot count.
    pub(super) async fn start(pid: u32) -> Result<Perf, String> {
        let events = WRITE_CALLS
            .iter()
            .map(|c| format!("syscalls:sys_enter_{c}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut child = std::process::Command::new("perf")
            .args(["stat", "-x,", "-e", &events, "-p", &pid.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("perf stat not run: {e}"))?;
        // perf prints nothing once attached; give it time to.
        tokio::time::sleep(Duration::from_millis(300)).await;
        match child.try_wait() {
            Ok(None) => Ok(Perf {
                child,
                pid,
                threads: thread_count(pid),
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read as _;
                    let _ = e.read_to_string(&mut err);
                }
                Err(format!("perf stat failed: {}", err.trim()))
            }
        }
    }

    /// Stops perf with SIGINT (it then prints its counts) and parses them;
    /// the second value is a note when the server started threads that
    /// perf did not count.
    pub(super) async fn stop(mut self) -> (Result<BTreeMap<String, u64>, String>, Option<String>) {
        let note = match (self.threads, thread_count(self.pid)) {
            (Some(before), Some(now)) if now > before => Some(format!(
                "the server went from {before} to {now} threads while perf counted; \
                 writes by the new threads are not in write_syscalls"
            )),
            _ => None,
        };
        (self.stop_perf().await, note)
    }

    pub(super) async fn stop_perf(&mut self) -> Result<BTreeMap<String, u64>, String> {
        let id = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-INT", &id])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err("perf stat did not stop on SIGINT".into());
                }
            }
        }
        let mut out = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read as _;
            let _ = e.read_to_string(&mut out);
        }
        parse_perf_csv(&out)
    }
}

/// Parses `perf stat -x,` output: `COUNT,UNIT,EVENT,...` per event.
/// `<not counted>` (the task never ran while counting) is 0; anything
/// else unparsable, or no write event at all, is an error.
pub(super) fn parse_perf_csv(text: &str) -> Result<BTreeMap<String, u64>, String> {
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        let Some(call) = f.get(2).and_then(|e| e.strip_prefix("syscalls:sys_enter_")) else {
            continue;
        };
        let n = match f[0].trim() {
            "<not counted>" => 0,
            v => v
                .parse::<u64>()
                .map_err(|_| format!("perf stat: {call}: {v}"))?,
        };
        counts.insert(call.to_string(), n);
    }
    if counts.is_empty() {
        return Err(format!("perf stat printed no counts: {}", text.trim()));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_csv_is_summed_per_call() {
        let text = "677581,,syscalls:sys_enter_write,399133733,100.00,,\n\
                    0,,syscalls:sys_enter_writev,399143511,100.00,,\n\
                    <not counted>,,syscalls:sys_enter_sendto,0,100.00,,\n\
                    12,,syscalls:sys_enter_sendmsg,399160574,100.00,,\n";
        let counts = parse_perf_csv(text).unwrap();
        assert_eq!(counts["write"], 677581);
        assert_eq!(counts["sendto"], 0);
        assert_eq!(counts.values().sum::<u64>(), 677593);
        assert!(parse_perf_csv("<not supported>,,syscalls:sys_enter_write,,,\n").is_err());
        assert!(parse_perf_csv("Error: no permission\n").is_err());
    }
}
