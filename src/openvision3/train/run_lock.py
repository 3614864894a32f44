"""One writer per run directory: ``OUT/.lock`` names the host and pid of the run that holds it.

Two processes training into one directory interleave checkpoints and metrics, and a second
``--resume auto`` would resume from a checkpoint the first is about to replace. So every run on
train/'s engine holds this lock for its whole run (``run_lock``, through ``run.hold_run_dir``).

The lock is an exclusive ``flock`` on ``OUT/.lock``: the kernel drops it when the holder exits in
any way (kill -9 included), also on NFS v4, so a lock file whose flock is free is *stale*; it is
taken over with a warning naming the dead holder. The file's text (JSON: host, pid, start time,
command) is only for the messages. On file systems without flock (some parallel file systems
mount without it) the same check falls back to the pid: on the holder's host a dead pid means
stale; from another host the lock is respected, and the message says how to remove it.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

LOCK_NAME = ".lock"


class RunLockError(Exception):
    """The run directory is in use by another live process; one line for the user."""


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0)))
    return f"host {holder.get('host', '?')} pid {holder.get('pid', '?')} (since {since})"


def _read(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text() or "{}")
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class RunLock:
    def __init__(self, out_dir):
        self.out = Path(out_dir)
        self.path = self.out / LOCK_NAME
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> "RunLock":
        self._created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                got = self._flock(fd)
                # The holder may have released (and unlinked) the file between our open and flock:
                # then we hold a lock on a file nobody else will look at; open the new one instead.
                if not got or os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        holder = _read(self.path)
        if not got:
            os.close(fd)
            raise RunLockError(f"run directory '{self.out}' is in use by {_describe(holder)}; wait for that "
                               f"run to end or stop it (lock file: {self.path})")
        if holder:
            warnings.warn(f"run directory '{self.out}': taking over the stale lock of {_describe(holder)}, "
                          f"a process that is gone (killed or crashed)")
        me = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
              "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def _flock(self, fd: int) -> bool:
        """True if this process now holds the lock."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
        # No flock on this file system: judge the recorded holder by its pid.
        holder = _read(self.path)
        if not holder:
            return True
        if holder.get("host") != socket.gethostname():
            raise RunLockError(f"run directory '{self.out}' is locked by {_describe(holder)}, on another host "
                               f"(this file system has no flock to tell whether it is alive); if that run "
                               f"is gone, delete {self.path}")
        return not _pid_alive(holder.get("pid")) or int(holder.get("pid")) == os.getpid()

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()  # before closing: nobody can lock this inode in between
        os.close(self._fd)  # drops the flock
        self._fd = None
        if self._created:  # a run that stopped before writing anything (a bad config) leaves no directory
            with contextlib.suppress(OSError):
                self.out.rmdir()  # only if empty


@contextlib.contextmanager
def run_lock(out_dir, enabled: bool = True):
    """Hold ``OUT/.lock`` for the block (``enabled=False``: a no-op, e.g. on ranks other than 0)."""
    if not enabled:
        yield None
        return
    lock = RunLock(out_dir).acquire()
    try:
        yield lock
    finally:
        lock.release()
