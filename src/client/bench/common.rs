//! What both benchmarks share: the bench line (built by senders, parsed by
//! receivers), waiting with a deadline, and the server process's CPU and
//! memory as /proc shows them.

use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Microseconds since `start`: the clock that bench lines carry.
pub(crate) fn micros(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// Builds message `seq` of `sender`, `size` bytes plus `\n`.
pub(crate) fn bench_line(sender: usize, seq: u64, t: u64, size: usize) -> Vec<u8> {
    let mut line = format!("#bench {sender} {seq} {t} ").into_bytes();
    line.resize(size.max(line.len()), b'x');
    line.push(b'\n');
    line
}

/// Parses a bench marker out of a received line; `Err(())` when the marker
/// is there but damaged. Byte by byte, without allocating or building a
/// searcher when the marker is at the first '#': receivers call this for
/// every delivery, and must stay much cheaper than the server.
pub(crate) fn parse_bench(line: &[u8], size: usize) -> Option<Result<(usize, u64, u64), ()>> {
    const MARK: &[u8] = b"#bench ";
    // Usually the first '#' (imd: `<NAME> #bench`); a full search otherwise.
    let pos = match memchr::memchr(b'#', line) {
        Some(p) if line[p..].starts_with(MARK) => p,
        Some(_) => find(line, MARK)?,
        None => return None,
    };
    let body = &line[pos..];
    let mut rest = &body[MARK.len()..];
    let parsed = (|| {
        let s = usize::try_from(take_number(&mut rest, false)?).ok()?;
        let q = take_number(&mut rest, false)?;
        let ts = take_number(&mut rest, true)?;
        // Without an early exit, so that it compiles to vector code.
        let pad_ok = rest.iter().fold(0u8, |acc, &b| acc | (b ^ b'x')) == 0;
        (body.len() == size && pad_ok).then_some((s, q, ts))
    })();
    Some(parsed.ok_or(()))
}

/// Takes a decimal number followed by a space (or, if `last`, by the end)
/// off the front of `rest`.
fn take_number(rest: &mut &[u8], last: bool) -> Option<u64> {
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in &rest[..digits] {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    match rest.get(digits) {
        Some(b' ') => *rest = &rest[digits + 1..],
        None if last => *rest = &rest[digits..],
        _ => return None,
    }
    Some(n)
}

pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// CPU time (user + system) the process has used, in seconds, from
/// /proc/PID/stat (clock ticks of 1/100 s on Linux).
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Resident memory of the process, in KiB, from /proc/PID/status.
pub(super) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until `cond` holds, re-checking on each notification and at least
/// every 50 ms; false if `deadline` passes first.
pub(crate) async fn wait_until(
    notify: &Notify,
    deadline: Instant,
    mut cond: impl FnMut() -> bool,
) -> bool {
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let step = (deadline - now).min(Duration::from_millis(50));
        let _ = tokio::time::timeout(step, notify.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_lines_parse_back_and_detect_damage() {
        let line = bench_line(3, 42, 1234, 64);
        assert_eq!(line.len(), 65);
        let body = &line[..64];
        assert_eq!(parse_bench(body, 64), Some(Ok((3, 42, 1234))));
        let mut prefixed = b"Address:[127.0.0.1:5]  127.0.0.1:5".to_vec();
        prefixed.extend_from_slice(body);
        assert_eq!(parse_bench(&prefixed, 64), Some(Ok((3, 42, 1234))));
        assert_eq!(parse_bench(&body[..63], 64), Some(Err(())));
        assert_eq!(parse_bench(b"<alice> hello", 64), None);
        assert_eq!(parse_bench(b"#bench 1 2 3", 12), Some(Ok((1, 2, 3))));
        assert_eq!(parse_bench(b"#bench 1 2", 10), Some(Err(())));
        assert_eq!(parse_bench(b"#bench 1 x 3 xx", 15), Some(Err(())));
        assert_eq!(parse_bench(b"#bench 1  2 3 xx", 16), Some(Err(())));
        let mut bad_pad = body.to_vec();
        bad_pad[60] = b'y';
        assert_eq!(parse_bench(&bad_pad, 64), Some(Err(())));
        let huge = b"#bench 1 99999999999999999999999 3 ";
        assert_eq!(parse_bench(huge, huge.len()), Some(Err(())));
    }
}
