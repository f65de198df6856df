#!/usr/bin/env python3
"""bench-storm.py: the memory storm of issue 10, against a running imd.

N connections that never read (default 2000), one client sending short
public lines at a fixed rate for D seconds (default 20 s, 5,000 lines/s of
48 bytes: about 5 MB of input), and a probe that connects a new client every
250 ms and times its welcome and a `who`. The server's resident memory is
sampled from /proc every 100 ms: the report gives the baseline, the peak
(VmHWM), the memory once the storm is over and every non-reader is gone,
how many non-readers the server cut, the slowest probe, and whether the
server still answers afterwards. Everything is bounded in time; it only
talks to the given address (use 127.0.0.1).

Usage: bench-storm.py --port P --pid PID [--frozen 2000] [--secs 20]
       [--rate 5000] [--size 48] [--json]
"""
import argparse, json, os, selectors, socket, sys, threading, time

def rss_kib(pid, field="VmRSS"):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None

def probe(addr, timeout=5.0):
    """Connect, wait for the welcome, ask `who`, wait for its end: seconds."""
    t0 = time.monotonic()
    s = socket.create_connection(addr, timeout=timeout)
    try:
        f = s.makefile("rb")
        if not f.readline().startswith(b"*** welcome"):
            return None
        s.sendall(b"who\n")
        while True:
            line = f.readline()
            if not line:
                return None
            if line.startswith(b"ok who:"):
                return time.monotonic() - t0
    except OSError:
        return None
    finally:
        s.close()

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--frozen", type=int, default=2000)
    ap.add_argument("--secs", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=5000.0)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    addr = (a.host, a.port)
    report = {"frozen": a.frozen, "secs": a.secs, "rate": a.rate, "size": a.size}
    report["rss_kib_before"] = rss_kib(a.pid)

    frozen = []
    for _ in range(a.frozen):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(addr)
        frozen.append(s)
    report["rss_kib_connected"] = rss_kib(a.pid)

    samples, stop = [], threading.Event()
    def sample():
        while not stop.is_set():
            samples.append(rss_kib(a.pid) or 0)
            time.sleep(0.1)
    threading.Thread(target=sample, daemon=True).start()
    probes = []
    def probing():
        while not stop.is_set():
            probes.append(probe(addr))
            time.sleep(0.25)
    pt = threading.Thread(target=probing, daemon=True)
    pt.start()

    sender = socket.create_connection(addr)
    sender.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sender, selectors.EVENT_READ)
    pad = b"x" * max(0, a.size - 16)
    t0 = time.monotonic()
    sent, out = 0, b""
    while time.monotonic() - t0 < a.secs:
        due = int((time.monotonic() - t0) * a.rate)
        while sent < due and len(out) < 1 << 20:
            out += b"%08d " % sent + pad + b"\n"
            sent += 1
        if out:
            try:
                n = sender.send(out)
                out = out[n:]
            except BlockingIOError:
                pass
            except OSError as e:
                report["sender_cut"] = str(e)
                break
        # Read and drop what the server sends us (our own lines come back).
        for _ in sel.select(timeout=0.005):
            try:
                if not sender.recv(1 << 20):
                    break
            except BlockingIOError:
                pass
    report["lines_sent"] = sent - len(out) // (a.size + 1)
    report["input_mb"] = report["lines_sent"] * (a.size + 1) / 1e6

    # How many non-readers the server cut: a cut socket reads EOF/RST once
    # its buffered bytes are read.
    cut = 0
    for s in frozen:
        s.setblocking(False)
        try:
            while True:
                d = s.recv(1 << 16)
                if not d:
                    cut += 1
                    break
        except BlockingIOError:
            pass
        except OSError:
            cut += 1
    report["frozen_cut_by_server"] = cut
    for s in frozen:
        s.close()
    sender.close()
    time.sleep(1.0)
    stop.set()
    pt.join(timeout=6)
    report["rss_kib_peak"] = max(samples + [rss_kib(a.pid, "VmHWM") or 0])
    report["rss_kib_after"] = rss_kib(a.pid)
    answered = [p for p in probes if p is not None]
    report["probes"] = len(probes)
    report["probes_unanswered"] = len(probes) - len(answered)
    report["probe_ms_max"] = round(max(answered) * 1000, 1) if answered else None
    after = probe(addr)
    report["healthy_after"] = after is not None
    if a.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:24} {v}")

if __name__ == "__main__":
    main()
