#!/usr/bin/env python3
"""Runs a program in a pseudo-terminal, driven line by line from stdin.

Used by tests/tty.rs to check imc's interactive REPL (rustyline, and its
ExternalPrinter for incoming lines), which only runs when stdin and stdout
are terminals. Commands, one per stdin line; each answers "ok" on stdout:

    expect TEXT   wait (up to 10 s) until TEXT appears in the terminal
                  output after the previous match; on timeout print
                  "timeout" and the output so far, and exit 1
    type TEXT     type TEXT and press Enter
    keys TEXT     type TEXT as given, escapes decoded (\t Tab, \r Enter,
                  \x03 Ctrl-C, \x1b[A Up), without pressing Enter
    ctrl-d        press Ctrl-D
    wait          wait (up to 10 s) for the program to exit; answers
                  "exit N"
    dump          print the whole output so far, escaped, on one line
    echo?         whether the terminal echoes what is typed (its ECHO
                  flag, also after the program exited): "echo on" or
                  "echo off"
"""
import os
import pty
import select
import signal
import sys
import termios
import time

pid, fd = pty.fork()
if pid == 0:
    # The program starts as a shell starts a job in the foreground: the
    # terminal's keys with their default actions. A suite started in the
    # background by a script (`cargo test &`), which ignores SIGINT and
    # SIGQUIT and passes that on through exec, would otherwise see Ctrl-C
    # at imd's password prompt do nothing.
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_DFL)
    os.execv(sys.argv[1], sys.argv[1:])

out = b""
pos = 0


def pump(timeout):
    global out
    r, _, _ = select.select([fd], [], [], timeout)
    if r:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return False
        if not data:
            return False
        out += data
    return True


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


for cmd in sys.stdin:
    cmd = cmd.rstrip("\n")
    if cmd.startswith("expect "):
        want = cmd[len("expect "):].encode()
        deadline = time.time() + 10
        while want not in out[pos:]:
            if time.time() > deadline:
                say("timeout " + repr(out.decode("utf-8", "replace")))
                sys.exit(1)
            if not pump(0.05) and want not in out[pos:]:
                say("closed " + repr(out.decode("utf-8", "replace")))
                sys.exit(1)
        pos = out.index(want, pos) + len(want)
        say("ok")
    elif cmd.startswith("type "):
        os.write(fd, cmd[len("type "):].encode() + b"\r")
        say("ok")
    elif cmd.startswith("keys "):
        keys = cmd[len("keys "):].encode().decode("unicode_escape").encode()
        os.write(fd, keys)
        say("ok")
    elif cmd == "ctrl-d":
        os.write(fd, b"\x04")
        say("ok")
    elif cmd == "wait":
        deadline = time.time() + 10
        while time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                say("exit %d" % os.waitstatus_to_exitcode(status))
                break
            pump(0.05)
        else:
            say("timeout waiting for exit")
            sys.exit(1)
    elif cmd == "echo?":
        on = termios.tcgetattr(fd)[3] & termios.ECHO
        say("echo on" if on else "echo off")
    elif cmd == "dump":
        while pump(0.01):
            if not select.select([fd], [], [], 0)[0]:
                break
        say(repr(out.decode("utf-8", "replace")))
