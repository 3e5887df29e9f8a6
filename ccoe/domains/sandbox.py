"""Run untrusted Python (model-written code) in a separate, restricted process.

Layers, each cheap: a fresh interpreter (`-I -S -B`: no site, no environment, no bytecode writes)
in a temporary working directory with a scrubbed environment; resource limits (address space, CPU
seconds, file size, open files) and a wall-clock timeout that kills the whole process group; and a
CPython audit hook, installed before the untrusted code runs and impossible to remove from Python,
that refuses writes outside the temporary directory, sockets, subprocesses, signals and ctypes.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PRELUDE = r'''
import os as _os, sys as _sys
_ROOT = _os.path.realpath(_os.getcwd())
_WRITE_FLAGS = _os.O_WRONLY | _os.O_RDWR | _os.O_CREAT | _os.O_APPEND | _os.O_TRUNC
_PATH_EVENTS = {"os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.chmod", "os.chown", "os.link", "os.symlink",
                "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
                "shutil.move", "os.chdir", "os.chroot", "os.mkfifo", "os.mknod"}
_DENIED = ("socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.system",
           "os.kill", "os.killpg", "os.setuid", "ctypes.", "sys.setprofile", "sys.settrace", "os.putenv", "os.unsetenv",
           "resource.setrlimit", "pty.", "webbrowser.", "urllib.", "http.", "ftplib.", "smtplib.")

def _inside(path):
    try:
        real = _os.path.realpath(_os.fsdecode(path))
    except Exception:
        return False
    return real == _ROOT or real.startswith(_ROOT + _os.sep)

def _guard(event, args):
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
        if writing and path is not None and not isinstance(path, int) and not _inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the working directory is not allowed")
    elif event in _PATH_EVENTS:
        for arg in args:
            if isinstance(arg, (str, bytes, _os.PathLike)) and not _inside(arg):
                raise PermissionError(f"sandbox: {event} on {arg!r} is not allowed")
    elif event.startswith(_DENIED):
        raise PermissionError(f"sandbox: {event} is not allowed")

_sys.addaudithook(_guard)
del _guard
'''


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    returncode: int | None
    timed_out: bool
    output: str


def _limits(memory_mb: int, cpu_s: int) -> None:
    os.setsid()
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_python(code: str, timeout_s: float = 5.0, memory_mb: int = 1024) -> SandboxResult:
    """Run `code` as a script; `passed` means it exited 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="ccoe-sandbox-") as tmp:
        program = Path(tmp) / "program.py"
        program.write_text(PRELUDE + "\n" + code)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8"}
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", str(program)], cwd=tmp, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=lambda: _limits(memory_mb, int(timeout_s) + 1),
        )
        try:
            out, _ = process.communicate(timeout=timeout_s)
            return SandboxResult(process.returncode == 0, process.returncode, False, out.decode(errors="replace")[-2000:])
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, _ = process.communicate()
            return SandboxResult(False, None, True, out.decode(errors="replace")[-2000:])
