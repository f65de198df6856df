#!/usr/bin/env python3
"""soak.py: a soak test of imd under mixed load (issue 10, section 4).

Not run in CI. It starts its own imd on 127.0.0.1 (port 0, so a free port),
then for --secs seconds (default 600) runs, all at once:

- fan-out: --publishers clients send numbered public lines at a steady total
  --rate; every long-lived client reads everything (--subscribers of them do
  nothing else);
- churn: clients joining and leaving continuously (--churn-rate a second):
  some send one line and close at once without reading ("last words"), some
  read the welcome, rename, say a line, wait for it to come back and quit,
  some only join and leave;
- renames: one client renames itself every --rename-every seconds (every
  fifth try to a taken name, which must be refused) and says a line under
  each new name;
- whispers: --whisperers clients whisper numbered lines to the others at a
  total --whisper-rate; every long-lived client also whispers itself every
  --keepalive seconds (that also keeps it under imd's idle timeout);
- one frozen client: connects, renames itself `frozen`, never reads. It must
  be cut as too slow (the observer must see `*** frozen is offline (too
  slow)`; presence notices are only sent while at most --presence-limit
  users are online);
- one flooder: for --flood-secs out of every --flood-every seconds it writes
  numbered lines flat out, as fast as its socket takes them (--flood-every 0:
  all the time). It must be slowed down (its writes block), never cut, and
  every line it sent must be delivered.

Every --sample-secs it prints imd's VmRSS and VmHWM, open fds (/proc/PID/fd),
threads (/proc/PID/status; tokio's tasks are not visible from outside the
process), CPU, and the time a brand-new client takes to get its welcome and
a `who` answered.

At the end it stops sending, waits for everything to arrive (--drain-secs),
and checks:
- every long-lived ("healthy") client saw every numbered public line of every
  publisher, of the flooder and of the renamer, in order with no gap and no
  duplicate, and the line of every churner that sent one;
- all long-lived clients saw the very same sequence of public lines (imd
  promises one global order): compared by a hash of the public lines;
- every whisper reached its recipient (and its sender got `ok to`), and
  every other reply was as expected (no unexpected `error` line);
- the observer saw the renamer's lines under the name the rename notices gave
  it at that point (renames are atomic with respect to messages);
- the frozen client was cut (`too slow`) and no healthy client was cut or
  disconnected;
- after all clients left, a new client's `who` answers `1 online` (nobody
  leaked), and imd exits 0 on SIGTERM.

Exit status: 0 if every check passed, 1 if anything was lost, reordered,
duplicated, a healthy client was cut or any other check failed, 2 for a
usage or setup error. Everything is bounded in time and talks to 127.0.0.1
only.

Usage: soak.py [IMD] [--secs 600] [--json] [--seed N] [--log FILE] ...
       (IMD defaults to target/release/imd, built with `cargo build
       --release` if missing; see --help for the rates and counts)

imd's stderr goes to --log with RUST_LOG=imchat=debug,info unless RUST_LOG
is set: every cut is logged with how long its socket had refused data
(`queue cut ... blocked_ms=`). For each healthy client that is cut, the
report lists its last reads (time, bytes), so a cut can be told apart from a
load generator that stopped reading; `read_gap_max_ms` is the longest time
any client went unread while data was waiting (its previous read filled the
buffer), `loop_gap_max_ms` the longest turn of the loop.

The default shape is about 6,600 fan-out deliveries a second plus, during
flood phases, as many as the script can read (about 8,000 flood lines a
second to 33 readers on a 2-vCPU VM). Runs shorter than about 30 s may end
before the frozen client has been cut (imd's kernel send buffer for it holds
about 4 MB first): use --flood-every 10 for those.

To check that the checker can fail: --drop-check N makes the observer
pretend it never received the N-th public line it read (a line lost inside
the script, as a lossy server would); the run must then report lost 1 and
exit 1.
"""
import argparse
import collections
import hashlib
import json
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")
READ_SIZE = 1 << 16     # one recv per client per loop turn


# ---------------------------------------------------------------------------
# /proc sampling

def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0])
                elif k == "Threads":
                    out[k] = int(v)
    except OSError:
        pass
    return out


def proc_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def proc_cpu_s(pid):
    """utime + stime of PID, seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


def mib(kib):
    return None if kib is None else round(kib / 1024, 1)


# ---------------------------------------------------------------------------
# A new client: welcome, `who`, answer. Used by the sampler and at the end.

def probe(addr, timeout=5.0):
    """(seconds to welcome + `who` answered, online count) or (None, error)."""
    t0 = time.monotonic()
    try:
        s = socket.create_connection(addr, timeout=timeout)
    except OSError as e:
        return None, f"connect: {e}"
    try:
        s.settimeout(timeout)
        buf = b""
        while b"\n" not in buf:
            d = s.recv(65536)
            if not d:
                return None, "closed before the welcome"
            buf += d
        if not buf.startswith(b"*** welcome"):
            return None, f"no welcome: {buf[:80]!r}"
        s.sendall(b"who\n")
        # Lines broadcast meanwhile may come first; `ok who` is always
        # at the start of a line.
        buf = b"\n" + buf[buf.index(b"\n") + 1:]   # a leading \n marks a line start
        while True:
            i = buf.find(b"\nok who: ")
            if i >= 0:
                j = buf.find(b"\n", i + 1)
                if j >= 0:
                    return time.monotonic() - t0, int(buf[i + 1:j].split()[2])
                buf = buf[i:]
            else:
                buf = buf[-16:]
            d = s.recv(1 << 16)
            if not d:
                return None, "closed before `ok who`"
            buf += d
    except (OSError, ValueError) as e:
        return None, f"{type(e).__name__}: {e}"
    finally:
        s.close()


# ---------------------------------------------------------------------------
# Long-lived clients: non-blocking sockets driven by one selector loop.

class Client:
    def __init__(self, kind, name):
        self.kind = kind            # sub, pub, whisper, renamer, observer, flooder
        self.name = name.encode()   # current name (the renamer's changes)
        self.sock = None
        self.buf = b""
        self.out = bytearray()
        self.writing = False
        self.eof = None             # why the connection ended, if it did
        self.bye = None             # a `*** bye:` line, if one came
        self.nxt = {}               # tag -> next expected sequence number
        self.gaps = []              # (tag, expected, got), first few
        self.lost = 0               # lines skipped over by a gap
        self.dups = 0               # lines at or below one already seen
        self.churn_seen = set()
        self.wh_seen = set()        # b"from text" of whispers received
        self.wh_expect = set()      # the same, of whispers sent to us
        self.acks = 0               # `ok to` replies
        self.nosuch = 0             # `error no-such-user` replies
        self.wh_sent = 0
        self.errors = []            # unexpected `error` lines
        self.lines_in = 0
        self.pub_in = 0
        self.hash = hashlib.sha256()
        self.seq = 0                # own sequence for numbered lines
        self.ka = 0                 # keepalives sent
        self.next_ka = 0.0
        self.end_seen = False
        self.reads = collections.deque(maxlen=32)   # (time, bytes) of recent reads
        self.last_full = None       # time of the last read that filled the buffer
        self.full_gap_max = 0.0     # longest wait after such a read (data waiting)


class Soak:
    def __init__(self, a, addr, pid):
        self.a = a
        self.addr = addr
        self.pid = pid
        self.rng = random.Random(a.seed)
        self.sel = selectors.DefaultSelector()
        self.clients = []
        self.failures = []
        self.notes = []
        # observer state
        self.renamer_name = None    # as the observer's notices say
        self.offline = collections.Counter()     # reason -> count (observer)
        self.healthy_offline = []
        self.frozen_cut = None
        self.frozen_cut_at = None
        self.rename_mismatch = []
        self.online_notices = 0
        self.rename_notices = 0
        self.drop_left = a.drop_check
        # sender bookkeeping
        self.final = {}             # tag -> lines sent
        self.churn_sent = set()     # churn ids whose line was sent
        self.churn_lock = threading.Lock()
        self.churn_stats = collections.Counter()
        self.renamer_expect = collections.deque()
        self.renames_ok = 0
        self.renames_refused = 0
        self.flood_bursts = []      # (last seq, seconds from the start of a phase until
                                    #  its last line came back to the flooder)
        self.flood_phases = []      # (lines written, seconds) of each flat-out phase
        self.flood_burst = None     # (start, last seq) of the burst in flight
        self.flood_eagain = 0
        self.flood_blocked_s = 0.0
        self.flood_block_t0 = None
        self.loop_gap_max = 0.0
        self.loop_gaps_100ms = 0
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    # -- connections -------------------------------------------------------

    def connect(self, kind, name, rcvbuf=None):
        c = Client(kind, name)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(10)
        s.connect(self.addr)
        buf = b""

        def line():
            nonlocal buf
            while b"\n" not in buf:
                d = s.recv(65536)
                if not d:
                    raise RuntimeError(f"{name}: closed during setup")
                buf += d
            i = buf.index(b"\n")
            ln, buf = buf[:i], buf[i + 1:]
            return ln
        welcome = line()
        if not welcome.startswith(b"*** welcome"):
            raise RuntimeError(f"{name}: no welcome: {welcome!r}")
        s.sendall(b"rename|" + c.name + b"\n")
        while True:
            ln = line()
            if ln.startswith(b"ok rename"):
                break
            if ln.startswith(b"error"):
                raise RuntimeError(f"{name}: rename refused: {ln!r}")
        c.buf = buf  # whatever came after the reply is read as usual
        s.setblocking(False)
        c.sock = s
        self.sel.register(s, selectors.EVENT_READ, c)
        self.clients.append(c)
        return c

    def send(self, c, data):
        if c.eof:
            return
        c.out += data
        self.flush(c)

    def flush(self, c):
        if not c.out or c.eof:
            return
        try:
            n = c.sock.send(c.out)
            del c.out[:n]
        except BlockingIOError:
            if c.kind == "flooder":
                self.flood_eagain += 1
        except OSError as e:
            self.ended(c, f"send failed: {e}")
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0)
        if (want & selectors.EVENT_WRITE) != c.writing:
            c.writing = bool(want & selectors.EVENT_WRITE)
            self.sel.modify(c.sock, want, c)
        if c.kind == "flooder":
            now = time.monotonic()
            if c.out and self.flood_block_t0 is None:
                self.flood_block_t0 = now
            elif not c.out and self.flood_block_t0 is not None:
                self.flood_blocked_s += now - self.flood_block_t0
                self.flood_block_t0 = None

    def ended(self, c, why):
        if c.eof:
            return
        c.eof = why
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass

    def read(self, c):
        try:
            data = c.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            self.ended(c, f"recv failed: {e}")
            return
        if not data:
            self.ended(c, "closed by the server")
            return
        now = time.monotonic()
        c.reads.append((now, len(data)))
        if c.last_full is not None and now - c.last_full > c.full_gap_max:
            c.full_gap_max = now - c.last_full
        c.last_full = now if len(data) == READ_SIZE else None
        self.feed(c, data)

    # -- what a client receives --------------------------------------------

    def feed(self, c, data):
        if c.buf:
            data = c.buf + data
        i = data.rfind(b"\n")
        if i < 0:
            c.buf = data
            return
        c.buf = data[i + 1:]
        lines = data[:i].split(b"\n")
        c.lines_in += len(lines)
        observer = c.kind == "observer"
        pubs = []
        nxt = c.nxt
        for line in lines:
            first = line[:1]
            if first == b"<":
                if observer and self.drop_left:
                    self.drop_left -= 1
                    if self.drop_left == 0:
                        continue    # --drop-check: pretend this one was lost
                pubs.append(line)
                j = line.find(b"> ")
                parts = line[j + 2:].split(b" ", 2)
                tag = parts[0]
                if tag == b"C":
                    c.churn_seen.add(parts[1])
                    continue
                if tag == b"E":
                    c.end_seen = True
                    continue
                try:
                    seq = int(parts[1])
                except (IndexError, ValueError):
                    c.errors.append(b"unparsable public line: " + line[:80])
                    continue
                want = nxt.get(tag, 0)
                if seq == want:
                    nxt[tag] = seq + 1
                elif seq > want:
                    c.lost += seq - want
                    if len(c.gaps) < 5:
                        c.gaps.append((tag.decode(), want, seq))
                    nxt[tag] = seq + 1
                else:
                    c.dups += 1
                if observer:
                    name = line[1:j]
                    if tag == b"R":
                        if name != self.renamer_name and len(self.rename_mismatch) < 5:
                            self.rename_mismatch.append(
                                (seq, name.decode(), (self.renamer_name or b"?").decode()))
                    elif tag == b"F":
                        if name != b"flooder":
                            c.errors.append(b"flooder line under another name: " + line[:80])
                    elif name != b"pub" + tag[1:]:
                        c.errors.append(b"publisher line under another name: " + line[:80])
                elif c.kind == "flooder" and tag == b"F" and self.flood_burst:
                    t0, last, n = self.flood_burst
                    if seq == last:
                        self.flood_bursts.append((n, time.monotonic() - t0))
                        self.flood_burst = None
            elif first == b"*":
                if line.startswith(b"*** "):
                    self.notice(c, line)
                else:
                    j = line.find(b"* ", 1)
                    c.wh_seen.add(line[1:j] + b" " + line[j + 2:])
            elif first == b"o":
                if line.startswith(b"ok to "):
                    c.acks += 1
                elif line.startswith(b"ok rename: you are now "):
                    self.renamer_reply(c, b"ok", line)
                else:
                    c.errors.append(b"unexpected: " + line[:100])
            elif first == b"e":
                if c.kind == "renamer" and line.startswith(b"error name-taken"):
                    self.renamer_reply(c, b"taken", line)
                else:
                    if line.startswith(b"error no-such-user"):
                        c.nosuch += 1   # a whisper to a client that was cut
                    c.errors.append(line[:200])
            elif line:
                c.errors.append(b"unexpected: " + line[:100])
        if pubs:
            c.pub_in += len(pubs)
            c.hash.update(b"\n".join(pubs))
            c.hash.update(b"\n")

    def notice(self, c, line):
        if line.startswith(b"*** bye:"):
            c.bye = line.decode(errors="replace")
            return
        if c.kind != "observer":
            return
        body = line[4:]
        if body.endswith(b")") and b" is offline (" in body:
            name, _, reason = body[:-1].partition(b" is offline (")
            reason = reason.decode()
            self.offline[reason] += 1
            if name == b"frozen":
                self.frozen_cut = reason
                self.frozen_cut_at = time.monotonic()
            elif name in self.healthy_names or name == self.renamer_name:
                self.healthy_offline.append(
                    f"{line.decode(errors='replace')} at {time.monotonic() - self.t0:.2f} s")
        elif body.endswith(b" is online"):
            self.online_notices += 1
        elif b" is now known as " in body:
            self.rename_notices += 1
            old, _, new = body.partition(b" is now known as ")
            if old == self.renamer_name:
                self.renamer_name = new

    def renamer_reply(self, c, kind, line):
        want = self.renamer_expect.popleft() if self.renamer_expect else None
        if want != kind:
            c.errors.append(b"renamer: expected %s, got: %s" % (want or b"nothing", line[:100]))
        elif kind == b"ok":
            self.renames_ok += 1
        else:
            self.renames_refused += 1

    # -- what clients send -------------------------------------------------

    def numbered(self, c, tag, size):
        text = b"%s %d " % (tag, c.seq)
        c.seq += 1
        return text + b"x" * max(1, size - len(text) - 1) + b"\n"

    def whisper(self, c, to, text):
        """Send `to|TO|TEXT` and remember that TO must get it."""
        to.wh_expect.add(c.name + b" " + text)
        c.wh_sent += 1
        self.send(c, b"to|" + to.name + b"|" + text + b"\n")

    # -- the churn thread ----------------------------------------------------

    def churn(self, rate, until):
        """Clients joining and leaving, --churn-rate a second, until `until`."""
        rng = random.Random(self.a.seed + 1)
        n = 0
        t0 = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= until:
                break
            due = t0 + n / rate
            if due > now:
                time.sleep(min(due - now, 0.5))
                continue
            kind = rng.choices(("last", "polite", "silent"), (4, 4, 2))[0]
            cid = b"%d" % n
            n += 1
            try:
                self.churn_one(kind, cid)
                self.churn_stats[kind] += 1
            except (OSError, RuntimeError) as e:
                self.churn_stats[kind + " failed"] += 1
                if len(self.notes) < 20:
                    self.notes.append(f"churner {kind} {cid.decode()}: {e}")

    def churn_one(self, kind, cid):
        s = socket.create_connection(self.addr, timeout=30)
        try:
            if kind == "last":
                # Say one line and close at once, never reading the welcome.
                s.sendall(b"C " + cid + b" last words\n")
                with self.churn_lock:
                    self.churn_sent.add(cid)
                return
            buf = b""
            while b"\n" not in buf:
                d = s.recv(4096)
                if not d:
                    raise RuntimeError("closed before the welcome")
                buf += d
            if not buf.startswith(b"*** welcome"):
                raise RuntimeError("no welcome")
            if kind == "silent":
                return
            s.sendall(b"rename|c" + cid + b"\nC " + cid + b" hello\n")
            with self.churn_lock:
                self.churn_sent.add(cid)
            want = b"\n<c" + cid + b"> C " + cid + b" hello\n"
            while want not in buf:
                d = s.recv(1 << 16)
                if not d:
                    raise RuntimeError("closed before its line came back")
                buf = buf[-len(want):] + d
        finally:
            s.close()

    # -- the sampler thread --------------------------------------------------

    def sampler(self, t0, every, out):
        last_t, last_cpu = time.monotonic(), proc_cpu_s(self.pid)
        while not self.stop.wait(every):
            self.sample(t0, out, last_t, last_cpu)
            last_t, last_cpu = time.monotonic(), proc_cpu_s(self.pid)

    def sample(self, t0, out, last_t, last_cpu, label=None):
        now = time.monotonic()
        st = proc_status(self.pid)
        cpu = proc_cpu_s(self.pid)
        fds = proc_fds(self.pid)
        lat, n = probe(self.addr)
        s = {
            "t": round(now - t0, 1),
            "rss_kib": st.get("VmRSS"),
            "hwm_kib": st.get("VmHWM"),
            "fds": fds,
            "threads": st.get("Threads"),
            "cpu_pct": round(100 * (cpu - last_cpu) / max(now - last_t, 1e-6))
            if cpu is not None and last_cpu is not None and last_t is not None else None,
            "probe_ms": round(lat * 1000, 1) if lat is not None else None,
            "online": n if lat is not None else None,
            "load1": loadavg(),
            "sent": sum(c.seq for c in self.clients if c.kind in ("pub", "flooder", "renamer"))
            + len(self.churn_sent),
            "received": sum(c.pub_in for c in self.clients),
            "gen_cpu_s": round(sum(os.times()[:2]), 1),
        }
        if lat is None:
            s["probe_error"] = n
        self.samples.append(s)
        print(f"[{label or ('%5.0fs' % s['t'])}] rss {mib(s['rss_kib'])} MiB"
              f" hwm {mib(s['hwm_kib'])} MiB fds {fds} threads {s['threads']}"
              f" cpu {s['cpu_pct']}% | online {s['online']} probe {s['probe_ms']} ms"
              f" | public lines sent {s['sent']} received {s['received']}"
              f" | load {s['load1']} gen-cpu {s['gen_cpu_s']} s"
              + (f" PROBE FAILED: {n}" if lat is None else ""),
              file=out, flush=True)

    # -- the run -------------------------------------------------------------

    def run(self, out):
        a = self.a
        self.samples = []
        t_setup = time.monotonic()
        base = proc_status(self.pid)
        self.base = {"rss_kib": base.get("VmRSS"), "fds": proc_fds(self.pid),
                     "threads": base.get("Threads")}
        obs = self.connect("observer", "obs")
        subs = [self.connect("sub", f"sub{i}") for i in range(a.subscribers)]
        pubs = [self.connect("pub", f"pub{i}") for i in range(a.publishers)]
        whs = [self.connect("whisper", f"w{i}") for i in range(a.whisperers)]
        ren = self.connect("renamer", "ren-0")
        self.renamer_name = b"ren-0"
        flooder = self.connect("flooder", "flooder")
        self.healthy_names = {c.name for c in self.clients if c.kind != "renamer"}
        healthy = list(self.clients)
        targets = [c for c in healthy if c.kind != "renamer"]
        # The frozen client: a tiny receive buffer, never read.
        frozen = socket.create_connection(self.addr, timeout=10)
        frozen.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        frozen.sendall(b"rename|frozen\n")
        print(f"setup: {len(healthy)} long-lived clients + 1 frozen in "
              f"{time.monotonic() - t_setup:.1f} s; load for {a.secs:g} s", file=out, flush=True)

        t0 = self.t0 = time.monotonic()
        end = t0 + a.secs
        for c in healthy:
            c.next_ka = t0 + self.rng.uniform(0, a.keepalive)
        churner = threading.Thread(target=self.churn, args=(a.churn_rate, end), daemon=True)
        churner.start()
        sampler = threading.Thread(target=self.sampler, args=(t0, a.sample_secs, out), daemon=True)
        sampler.start()

        pub_rate = a.rate / max(1, a.publishers)
        wh_n = 0
        next_rename = t0 + a.rename_every
        renames = 0
        next_flood = t0 + min(2.0, a.flood_every or 2.0)
        flood_until = None
        last_iter = time.monotonic()
        # Load phase: senders on their schedules, everyone read.
        while True:
            now = time.monotonic()
            gap = now - last_iter
            if gap > self.loop_gap_max:
                self.loop_gap_max = gap
            if gap > 0.1:
                self.loop_gaps_100ms += 1
            last_iter = now
            if now >= end:
                break
            el = now - t0
            for p in pubs:
                due = int(el * pub_rate)
                if p.seq < due and len(p.out) < (1 << 20):
                    chunk = bytearray()
                    while p.seq < due and len(chunk) < (1 << 20):
                        chunk += self.numbered(p, b"P" + p.name[3:], a.size)
                    self.send(p, chunk)
            due = int(el * a.whisper_rate)
            while wh_n < due and whs:
                wh_n += 1
                w = self.rng.choice(whs)
                to = self.rng.choice([t for t in targets if t is not w])
                self.whisper(w, to, self.numbered(w, b"W" + w.name[1:], a.size)[:-1])
            if now >= next_rename:
                next_rename += a.rename_every
                renames += 1
                if renames % 5 == 0:
                    self.renamer_expect.append(b"taken")
                    self.send(ren, b"rename|sub0\n")
                else:
                    self.renamer_expect.append(b"ok")
                    self.send(ren, b"rename|ren-%d\n" % renames)
                self.send(ren, self.numbered(ren, b"R", a.size))
            for c in healthy:
                if now >= c.next_ka and c.kind != "renamer":
                    c.next_ka += a.keepalive
                    c.ka += 1
                    self.whisper(c, c, b"K %d" % c.ka)
            # The flooder: flat out (its socket as full as it takes) for
            # --flood-secs every --flood-every seconds, or always.
            if flood_until is None and now >= next_flood:
                flood_until = now + a.flood_secs if a.flood_every else end
                next_flood += a.flood_every or a.secs
                flood_start, flood_seq0 = now, flooder.seq
            if flood_until is not None:
                if now < flood_until:
                    if len(flooder.out) < (1 << 18) and not flooder.eof:
                        chunk = bytearray()
                        for _ in range(1000):
                            chunk += self.numbered(flooder, b"F", a.flood_size)
                        self.send(flooder, chunk)
                else:
                    flood_until = None
                    self.flood_phases.append((flooder.seq - flood_seq0, now - flood_start))
                    if self.flood_burst is None:
                        self.flood_burst = (flood_start, flooder.seq - 1, flooder.seq - flood_seq0)
            self.pump(0.005)

        self.final = {}
        for p in pubs:
            self.final[b"P" + p.name[3:]] = p.seq
        self.final[b"R"] = ren.seq
        self.final[b"F"] = flooder.seq
        sending_done = time.monotonic()
        print(f"load over after {sending_done - t0:.1f} s; waiting for the churn thread"
              " and for everything to arrive", file=out, flush=True)
        churner.join(timeout=60)
        if churner.is_alive():
            self.failures.append("the churn thread did not finish within 60 s")
        with self.churn_lock:
            churn_sent = set(self.churn_sent)

        # Drain: until every healthy client has everything, then an end
        # marker from the observer that everyone must see.
        deadline = time.monotonic() + a.drain_secs

        # Lines of a sender that was cut may never come: not waited for.
        live_tags = {b"P" + p.name[3:]: p for p in pubs}
        live_tags.update({b"R": ren, b"F": flooder})
        cut_names = lambda: {c.name for c in healthy if c.eof}

        def complete():
            gone = cut_names()
            for c in healthy:
                if c.eof:
                    continue
                if c.out:
                    return False
                for tag, n in self.final.items():
                    if c.nxt.get(tag, 0) < n and not live_tags[tag].eof:
                        return False
                if not churn_sent <= c.churn_seen:
                    return False
                if any(m.split(b" ", 1)[0] not in gone for m in c.wh_expect - c.wh_seen):
                    return False
                if c.acks + c.nosuch < c.wh_sent:
                    return False
            return not self.renamer_expect
        while time.monotonic() < deadline and not complete():
            self.pump(0.05)
        drained = complete()
        drain_s = time.monotonic() - sending_done
        marker = next((c for c in healthy if not c.eof), obs)
        self.send(marker, b"E 0 end of the soak\n")
        while time.monotonic() < deadline + 10 and not all(c.end_seen or c.eof for c in healthy):
            self.pump(0.05)
        self.stop.set()
        sampler.join(timeout=15)
        loaded = proc_status(self.pid)
        loaded_fds = proc_fds(self.pid)

        # The frozen client: cut? imd resets a cut connection, but a reset
        # sent into a zero window may never be accepted, so poke it: a line
        # sent to a closed connection is answered with a reset.
        frozen_closed = False
        frozen.settimeout(0.5)
        t_f = time.monotonic()
        try:
            frozen.sendall(b"\n")
            while time.monotonic() - t_f < 5:
                try:
                    if not frozen.recv(1 << 16):
                        frozen_closed = True
                        break
                except socket.timeout:
                    frozen.sendall(b"\n")
        except OSError:
            frozen_closed = True

        # Everyone leaves; a new client must be alone.
        for c in healthy:
            try:
                c.sock.close()
            except OSError:
                pass
        frozen.close()
        who_n, who_lat = None, None
        t_leave = time.monotonic()
        while time.monotonic() - t_leave < 15:
            lat, n = probe(self.addr)
            if lat is not None:
                who_lat, who_n = lat, n
                if n == 1:
                    break
            time.sleep(0.5)
        time.sleep(1.0)
        self.sample(t0, out, None, None, label="final")
        final = self.samples[-1]

        # ---- checks -------------------------------------------------------
        R = collections.OrderedDict()
        R["secs"] = a.secs
        R["seed"] = a.seed
        R["shape"] = {
            "long_lived_clients": len(healthy), "subscribers": a.subscribers,
            "publishers": a.publishers, "public_rate": a.rate, "size": a.size,
            "whisperers": a.whisperers, "whisper_rate": a.whisper_rate,
            "keepalive_s": a.keepalive, "churn_rate": a.churn_rate,
            "rename_every_s": a.rename_every, "flood_secs": a.flood_secs,
            "flood_every_s": a.flood_every, "flood_size": a.flood_size,
            "presence_limit": a.presence_limit,
        }
        public_sent = sum(self.final.values()) + len(churn_sent)
        expected_public = public_sent * len(healthy)
        # What is missing is "lost" if both ends stayed connected (imd owed
        # it), and "undelivered_after_cut" if the recipient was cut, or the
        # sender was cut with it still unread in its socket.
        sender_of = {b"P" + p.name[3:]: p for p in pubs}
        sender_of[b"R"] = ren
        sender_of[b"F"] = flooder
        by_name = {c.name: c for c in healthy}
        got_public = 0
        lost = undelivered = dups = 0
        tails_seen = collections.defaultdict(list)
        for c in healthy:
            missing_churn = churn_sent - c.churn_seen
            got = (sum(min(c.nxt.get(tag, 0), n) for tag, n in self.final.items()) - c.lost
                   + len(churn_sent) - len(missing_churn))
            got_public += got
            lost += c.lost          # a gap is a loss whatever happened later
            for tag, n in self.final.items():
                tail = max(0, n - c.nxt.get(tag, 0))
                if c.eof or sender_of[tag].eof:
                    undelivered += tail
                else:
                    lost += tail
            if c.eof:
                undelivered += len(missing_churn)
            else:
                lost += len(missing_churn)
            dups += c.dups
            if c.lost or c.gaps:
                self.failures.append(f"{c.name.decode()}: gaps (tag, expected, got) {c.gaps} "
                                     f"({c.lost} lines)")
            tails = {tag.decode(): (c.nxt.get(tag, 0), n) for tag, n in self.final.items()
                     if c.nxt.get(tag, 0) < n}
            if tails:
                tails_seen[repr(tails)].append(c.name.decode())
            if missing_churn:
                ids = sorted(int(x) for x in missing_churn)
                self.failures.append(f"{c.name.decode()}: missed {len(ids)} churners' lines, "
                                     f"ids {ids[:10]}")
            if c.dups:
                self.failures.append(f"{c.name.decode()}: {c.dups} duplicate or reordered lines")
        for tails, names in tails_seen.items():
            self.failures.append(f"{', '.join(names)}: missing the last lines of "
                                 f"(next expected, sent) {tails}")
        wh_sent = sum(c.wh_sent for c in healthy)
        wh_missing = 0
        for c in healthy:
            miss = c.wh_expect - c.wh_seen
            extra = c.wh_seen - c.wh_expect
            wh_missing += len(miss)
            for m in miss:
                frm = by_name.get(m.split(b" ", 1)[0])
                if c.eof or (frm is not None and frm.eof):
                    undelivered += 1
                else:
                    lost += 1
            if miss:
                self.failures.append(f"{c.name.decode()}: {len(miss)} whispers never arrived, "
                                     f"e.g. {sorted(miss)[:3]}")
            if extra:
                self.failures.append(f"{c.name.decode()}: {len(extra)} unexpected whispers, "
                                     f"e.g. {sorted(extra)[:3]}")
            if c.acks != c.wh_sent:
                self.failures.append(f"{c.name.decode()}: {c.wh_sent} whispers sent, "
                                     f"{c.acks} `ok to` replies")
            if c.errors:
                self.failures.append(f"{c.name.decode()}: {len(c.errors)} unexpected lines, "
                                     f"e.g. {c.errors[:3]}")
        hashes = collections.Counter((c.hash.hexdigest(), c.pub_in) for c in healthy)
        if len(hashes) > 1:
            self.failures.append(
                "healthy clients saw different sequences of public lines: "
                + ", ".join(f"{c.name.decode()} {c.pub_in} {c.hash.hexdigest()[:12]}"
                            for c in healthy))
        cut = [f"{c.name.decode()}: {c.eof}" + (f" ({c.bye})" if c.bye else "")
               for c in healthy if c.eof or c.bye]
        if cut:
            self.failures.append(f"healthy clients disconnected: {cut}")
            for c in healthy:
                if c.eof or c.bye:
                    self.failures.append(
                        f"{c.name.decode()}'s last reads (seconds into the run, bytes): "
                        + " ".join(f"{t - t0:.3f}:{n}" for t, n in c.reads))
        if self.healthy_offline:
            self.failures.append(f"observer saw healthy clients go offline: "
                                 f"{self.healthy_offline[:5]}")
        if self.rename_mismatch:
            self.failures.append("renamer lines under a name other than the notices gave "
                                 f"(seq, name, expected): {self.rename_mismatch}")
        if self.frozen_cut != "too slow":
            self.failures.append(f"frozen client: observer saw offline reason "
                                 f"{self.frozen_cut!r}, expected 'too slow'")
        if not frozen_closed:
            self.failures.append("frozen client's connection was still open at the end")
        if not drained:
            self.failures.append(f"not everything arrived within --drain-secs {a.drain_secs}")
        if not all(c.end_seen for c in healthy if not c.eof):
            self.failures.append("the end marker did not reach every healthy client")
        if who_n != 1:
            self.failures.append(f"after everyone left, a new client's `who` said {who_n!r} "
                                 "online (expected 1)")
        probes_failed = [s for s in self.samples if s.get("probe_ms") is None]
        if probes_failed:
            self.failures.append(f"{len(probes_failed)} probes unanswered, e.g. "
                                 f"{probes_failed[0].get('probe_error')}")

        rss = [s["rss_kib"] for s in self.samples if s.get("rss_kib")]
        fds = [s["fds"] for s in self.samples if s.get("fds") is not None]
        thr = [s["threads"] for s in self.samples if s.get("threads")]
        probes_ok = [s["probe_ms"] for s in self.samples if s.get("probe_ms") is not None]
        cpu = [s["cpu_pct"] for s in self.samples[:-1] if s.get("cpu_pct") is not None]
        loads = [s["load1"] for s in self.samples if s.get("load1") is not None]
        R["imd"] = {
            "rss_mib_start": mib(self.base["rss_kib"]),
            "rss_mib_peak_sampled": mib(max(rss)) if rss else None,
            "rss_mib_hwm": mib(final.get("hwm_kib")),
            "rss_mib_end_of_load": mib(loaded.get("VmRSS")),
            "rss_mib_final": mib(final.get("rss_kib")),
            "fds_start": self.base["fds"], "fds_peak": max(fds) if fds else None,
            "fds_end_of_load": loaded_fds, "fds_final": final.get("fds"),
            "threads_start": self.base["threads"], "threads_max": max(thr) if thr else None,
            "threads_final": final.get("threads"),
            "cpu_pct_mean": round(sum(cpu) / len(cpu)) if cpu else None,
            "cpu_pct_max": max(cpu) if cpu else None,
            "tasks": "not visible from outside (tokio tasks are not OS threads)",
        }
        R["lines"] = {
            "public_sent": public_sent,
            "public_sent_by": {k.decode(): v for k, v in self.final.items()},
            "churn_lines_sent": len(churn_sent),
            "public_expected_deliveries": expected_public,
            "public_delivered": got_public,
            "whispers_sent": wh_sent,
            "whispers_delivered": wh_sent - wh_missing,
            "lost": lost,
            "undelivered_after_cut": undelivered,
            "duplicated_or_reordered": dups,
            "same_order_everywhere": len(hashes) == 1,
            "lines_read_by_healthy_clients": sum(c.lines_in for c in healthy),
        }
        R["cut"] = {
            "frozen": self.frozen_cut,
            "frozen_cut_after_s": round(self.frozen_cut_at - t0, 1) if self.frozen_cut_at else None,
            "frozen_connection_closed": frozen_closed,
            "healthy_disconnected": cut,
            "offline_notices_by_reason": dict(self.offline),
        }
        ph = self.flood_phases
        R["flooder"] = {
            "lines": flooder.seq,
            "phases": len(ph),
            "lines_per_phase_mean": round(sum(n for n, _ in ph) / len(ph)) if ph else None,
            "lines_per_s_in_phases": round(sum(n for n, _ in ph) / max(1e-9, sum(d for _, d in ph)))
            if ph else None,
            "lines_per_s_delivered": round(sum(n for n, _ in self.flood_bursts)
                                           / max(1e-9, sum(d for _, d in self.flood_bursts)))
            if self.flood_bursts else None,
            "phase_start_to_last_line_back_s_max": round(max(d for _, d in self.flood_bursts), 2)
            if self.flood_bursts else None,
            "send_would_block": self.flood_eagain,
            "seconds_with_unsent_output": round(self.flood_blocked_s, 1),
            "cut": bool(flooder.eof or flooder.bye),
        }
        R["churn"] = dict(self.churn_stats)
        R["renames"] = {"ok": self.renames_ok, "refused_as_taken": self.renames_refused,
                        "notices_seen_by_observer": self.rename_notices}
        R["probe"] = {"count": len(self.samples), "ms_max": max(probes_ok) if probes_ok else None,
                      "ms_median": sorted(probes_ok)[len(probes_ok) // 2] if probes_ok else None,
                      "who_after_all_left": who_n,
                      "who_after_ms": round(who_lat * 1000, 1) if who_lat else None}
        R["drain_s"] = round(drain_s, 1)
        R["generator"] = {"cpu_s": round(sum(os.times()[:2]), 1),
                          "read_gap_max_ms": round(max(c.full_gap_max for c in healthy) * 1000, 1),
                          "loop_gap_max_ms": round(self.loop_gap_max * 1000, 1),
                          "loop_gaps_over_100ms": self.loop_gaps_100ms}
        R["load1_max"] = max(loads) if loads else None
        R["notes"] = self.notes
        R["samples"] = self.samples
        return R

    def pump(self, timeout):
        for key, mask in self.sel.select(timeout):
            c = key.data
            if mask & selectors.EVENT_READ:
                self.read(c)
            if mask & selectors.EVENT_WRITE and not c.eof:
                self.flush(c)


# ---------------------------------------------------------------------------

def start_imd(a, log):
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "imchat=debug,info")  # debug: each cut with blocked_ms
    cmd = [a.imd, "--ip", "127.0.0.1", "--port", "0",
           "--presence-limit", str(a.presence_limit)] + a.imd_arg
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                         env=env)
    first = p.stdout.readline().decode(errors="replace").strip()
    if not first.startswith("imd listening on "):
        p.kill()
        p.wait()
        raise SystemExit(f"soak: imd did not start: {first!r} (log: {a.log})")
    port = int(first.rsplit(":", 1)[1])

    def copy():
        for line in p.stdout:
            log.write(line)
            log.flush()
    threading.Thread(target=copy, daemon=True).start()
    return p, port


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("imd", nargs="?", default=os.path.join(REPO, "target/release/imd"),
                    help="imd binary (built with cargo build --release if missing)")
    ap.add_argument("--secs", type=float, default=600.0, help="seconds of load")
    ap.add_argument("--json", action="store_true",
                    help="print the report as JSON on stdout (progress goes to stderr)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (whisper targets, churn mix)")
    ap.add_argument("--subscribers", type=int, default=20, help="clients that only read")
    ap.add_argument("--publishers", type=int, default=4, help="clients sending numbered public lines")
    ap.add_argument("--rate", type=float, default=200.0,
                    help="public lines a second, all publishers together")
    ap.add_argument("--size", type=int, default=64, help="bytes per numbered line")
    ap.add_argument("--whisperers", type=int, default=6, help="clients whispering the others")
    ap.add_argument("--whisper-rate", type=float, default=20.0, help="whispers a second in all")
    ap.add_argument("--keepalive", type=float, default=30.0,
                    help="each long-lived client whispers itself this often (seconds)")
    ap.add_argument("--churn-rate", type=float, default=5.0, help="churning clients a second")
    ap.add_argument("--rename-every", type=float, default=2.0, help="seconds between renames")
    ap.add_argument("--flood-secs", type=float, default=2.0,
                    help="seconds of each flat-out flood phase")
    ap.add_argument("--flood-every", type=float, default=20.0,
                    help="seconds between the starts of flood phases; 0: flood all the time")
    ap.add_argument("--flood-size", type=int, default=120, help="bytes per flood line")
    ap.add_argument("--presence-limit", type=int, default=1000, help="passed to imd")
    ap.add_argument("--imd-arg", action="append", default=[],
                    help="one more argument for imd, repeatable: --imd-arg=--stall-ms --imd-arg=500")
    ap.add_argument("--sample-secs", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--drain-secs", type=float, default=60.0,
                    help="how long to wait for everything to arrive after the load")
    ap.add_argument("--log", default=None, help="imd's stderr (default /tmp/soak-imd-PID.log)")
    ap.add_argument("--drop-check", type=int, default=0,
                    help="self-test: the observer ignores its N-th public line (must fail)")
    a = ap.parse_args()
    if a.secs <= 0 or a.rate < 0 or a.churn_rate <= 0 or a.rename_every <= 0 or a.keepalive <= 0:
        ap.error("--secs, --churn-rate, --rename-every, --keepalive must be positive")
    n_online = 1 + a.subscribers + a.publishers + a.whisperers + 3
    if n_online + 10 > a.presence_limit:
        print(f"soak: warning: about {n_online} users online against --presence-limit "
              f"{a.presence_limit}: the frozen client's `too slow` notice may not be sent",
              file=sys.stderr)
    out = sys.stderr if a.json else sys.stdout

    if not os.path.exists(a.imd):
        if a.imd != os.path.join(REPO, "target/release/imd"):
            sys.exit(f"soak: no such binary: {a.imd}")
        print("soak: building imd (cargo build --release)", file=out, flush=True)
        r = subprocess.run(["cargo", "build", "--release", "--bin", "imd"], cwd=REPO)
        if r.returncode != 0 or not os.path.exists(a.imd):
            sys.exit("soak: cargo build --release failed (if src/ is being edited, retry "
                     "in a minute, or pass a copy of a built imd)")
    a.log = a.log or f"/tmp/soak-imd-{os.getpid()}.log"
    log = open(a.log, "wb")
    proc, port = start_imd(a, log)
    print(f"soak: imd pid {proc.pid} on 127.0.0.1:{port}, log {a.log}, seed {a.seed}",
          file=out, flush=True)
    rc = 1
    try:
        soak = Soak(a, ("127.0.0.1", port), proc.pid)
        report = soak.run(out)
        # Graceful shutdown must still work.
        proc.send_signal(signal.SIGTERM)
        try:
            report["imd_exit"] = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            report["imd_exit"] = f"still running 15 s after SIGTERM (killed: {proc.wait()})"
        if report["imd_exit"] != 0:
            soak.failures.append(f"imd exit status after SIGTERM: {report['imd_exit']}")
        report["imd_log"] = a.log
        report["failures"] = soak.failures
        report["ok"] = not soak.failures
        rc = 0 if report["ok"] else 1
        if a.json:
            print(json.dumps(report))
        else:
            show = {k: v for k, v in report.items() if k != "samples"}
            for k, v in show.items():
                if isinstance(v, dict):
                    print(f"{k}:")
                    for k2, v2 in v.items():
                        print(f"    {k2:32} {v2}")
                elif k == "failures":
                    print("failures:" + ("" if v else " none"))
                    for f in v:
                        print(f"    {f}")
                else:
                    print(f"{k:36} {v}")
            print("PASS" if report["ok"] else "FAIL")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    sys.exit(rc)


if __name__ == "__main__":
    main()
