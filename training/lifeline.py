"""Tie a trainer's lifetime to the process that launched it.

A launcher that dies without cleaning up (SIGKILL, OOM killer, a lost host) must not leave
trainers behind: they hold the accelerator, keep writing checkpoints into a staging dir a
retry will use, and nobody reads their output. Two mechanisms, both stdlib-only so this file
runs before anything heavy is imported:

* Linux: `prctl(PR_SET_PDEATHSIG)` makes the kernel signal this process when the thread that
  forked it exits. It survives `execve`, so the wrapper below sets it and then *becomes* the
  command (same pid, same process group): no extra process and no polling.
* elsewhere (macOS has no prctl): the wrapper stays as a small supervisor of the command and
  blocks on a pipe whose only write end the launcher holds. The kernel closes it when the
  launcher dies, however it dies; the read returns EOF and the supervisor stops the command
  (SIGTERM to its process group, a grace period, then SIGKILL). A pipe is event-driven and
  immune to pid reuse, unlike polling `os.getppid()`.

Usage (what resources/launchers.py runs):
    python training/lifeline.py --parent PID --fd FD [--grace S] [--watch] -- CMD ARGS...
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# The signals a launcher stops a trainer tree with (a group SIGTERM, the parent-death SIGTERM; SIGINT for Ctrl-C).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def honour_stop_signals(signals: Sequence[int] = STOP_SIGNALS) -> None:
    """Un-ignore and unblock the stop signals.

    An ignored disposition and a blocked mask survive fork and exec, so a trainer inherits whatever its launcher
    had. A Dagster run worker whose SIGINT was ignored (a job started in the background by a non-interactive
    shell) ends every in-process execution with SIGTERM ignored too, since Dagster maps SIGTERM to SIGINT's
    handler; its trainers would then outlive a cancelled run and their dead launcher. A handler a program
    installed on purpose is kept: only SIG_IGN becomes SIG_DFL.
    """
    if threading.current_thread() is threading.main_thread():  # only the main thread may set a disposition
        for sig in signals:
            if signal.getsignal(sig) == signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `sig` to this process when its parent thread exits; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Set the parent-death signal, then exit at once if the parent is already gone (the race before prctl).

    An ignored or blocked ``sig`` would make the parent-death signal a no-op, so it is honoured first.
    """
    honour_stop_signals((sig,))
    parent = os.getppid()
    if not set_parent_death_signal(sig):
        return False
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)
    return True


def _exit_like(code: int) -> None:
    """Exit with the child's status: a signal death is re-raised so the launcher sees the same signal."""
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


def supervise(cmd: Sequence[str], lifeline_fd: int, grace: float) -> int:
    """Run `cmd` as a child; stop it when the lifeline pipe reaches EOF (the launcher is gone). Returns its code."""
    # A Python-level handler (not SIG_IGN, which exec would pass on to the child): the launcher signals the whole
    # process group, so the child already gets its own copy; this process stays to report the child's status.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    child = subprocess.Popen(list(cmd))

    def watch() -> None:
        while True:
            try:
                if not os.read(lifeline_fd, 1):  # b"" = EOF: every write end is closed, the launcher is gone
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        if child.poll() is not None:
            return
        print(f"lifeline: launcher gone, stopping pid {child.pid}", file=sys.stderr, flush=True)
        # The launcher starts us as a session leader: the group is the command's whole tree and this process
        # (which ignores SIGTERM, see above). Run any other way, only the child is ours to signal.
        leader = os.getpgrp() == os.getpid()
        stop = (lambda sig: os.killpg(os.getpid(), sig)) if leader else child.send_signal
        stop(signal.SIGTERM)
        try:
            child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            stop(signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="lifeline-watch").start()
    return child.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run a command that dies with its launcher")
    parser.add_argument("--parent", type=int, required=True, help="pid of the launcher (checked after prctl)")
    parser.add_argument("--fd", type=int, required=True, help="read end of the launcher's lifeline pipe")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--watch", action="store_true", help="supervise with the pipe even where prctl exists")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command given after --")
    if os.getppid() != args.parent:  # the launcher died before we got here
        return 128 + signal.SIGTERM
    honour_stop_signals()  # before exec or supervise: the command inherits the dispositions and the mask
    if not args.watch and set_parent_death_signal(signal.SIGTERM):
        if os.getppid() != args.parent:  # died between the check above and prctl
            return 128 + signal.SIGTERM
        os.close(args.fd)
        os.execvp(cmd[0], cmd)  # the command keeps the death signal, the pid and the process group
    _exit_like(supervise(cmd, args.fd, args.grace))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
