"""Run untrusted Python (model-written code) in a separate, restricted process.

`run_python` starts this file as a script (the *runner*) in a fresh interpreter (`-I -S -B`) and waits
for a status line on a pipe. The runner sets up the layers below, forks, and runs the program in the
child; the runner itself stays outside as the supervisor that enforces the timeout and kills every
process the program started. Layers, each reported by name (`isolation()`, `SandboxResult.isolation`):

- "audit-hook": a CPython audit hook, installed before the program runs and impossible to remove from
  Python. Its rules and the functions it calls are captured in closures when it is made, and the
  program runs in a fresh `__main__`, so rebinding names (in any globals, builtins or `os`) changes
  nothing; gc's object walks, tracing and code-object construction, which could reach or rewrite
  it, are refused. It refuses writes outside the working directory, directory descriptors outside it
  (so `dir_fd=` cannot point outside), process creation, signals, the standard modules that bypass
  auditing (`_posixsubprocess`, `_socket`, `ctypes`, `_sqlite3`, subinterpreters, `posix` re-imports)
  and extension modules from outside the standard library (cffi's could call `system()`).
- "rlimits": address space, CPU seconds, file size, open files, processes, no core dumps.
- "kill-descendants": the runner is a child subreaper, so processes that call setsid() or double-fork
  stay its descendants and are killed when the program exits or times out.
- "private-uid" (when started as root): the program runs as a uid of its own with no capabilities,
  so it cannot write root's files, signal other processes, or exceed RLIMIT_NPROC.
- "no-network", "pid-namespace", "read-only-fs" (where the kernel allows unsharing namespaces):
  an empty network namespace, a PID namespace whose processes all die with the program, and a mount
  namespace in which every mount is read-only except a private tmpfs working directory (a directory
  the private uid could not enter on the way to the standard library, /root for pyenv, is replaced
  by one showing only the standard library).
Missing layers are logged once; the CPython layer alone is a best effort, the kernel layers hold
even against code that escapes the interpreter.

The runner must not import `subprocess` or `socket` (the program could reach them through its
frames), so this file is a script up to the `__main__` gate and a library after it.
"""

from __future__ import annotations

import builtins
import os
import resource
import signal
import sys
import time

LAYERS = ("audit-hook", "rlimits", "kill-descendants", "private-uid", "no-network", "pid-namespace", "read-only-fs")
_UID_BASE = 2_000_000_000  # + the runner's pid: a uid no account uses, unique among running sandboxes
_WORK_MB = 64
_NPROC = 32
_CLONE = {"no-network": 0x40000000, "pid-namespace": 0x20000000, "read-only-fs": 0x00020000 | 0x08000000}
_CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 18, 1 << 21, 1 << 24
_KEPT_MOUNT_FLAGS = {"nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME,
                     "relatime": MS_RELATIME}
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 24, 36, 38

_ONE_PATH_EVENTS = frozenset({"os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.utime", "os.truncate",
                              "os.chdir", "os.setxattr", "os.removexattr"})
_TWO_PATH_EVENTS = frozenset({"os.rename"})
_DENIED_EVENTS = ("os.exec", "os.fork", "os.posix_spawn", "os.spawn", "os.system", "os.kill", "os.link", "os.symlink",
                  "os.chroot", "socket.", "subprocess.", "ctypes.", "pty.", "sys.settrace", "sys.setprofile", "gc.get_",
                  "code.__new__", "cpython.PyInterpreterState_New", "resource.", "fcntl.ioctl", "syslog.")
# Standard-library modules that spawn, connect, call C, or write files without an audit event, and posix (whose
# fresh copy would bring back the functions replaced by `_refusing`).
_DENIED_MODULES = frozenset({"_posixsubprocess", "_socket", "ctypes", "_ctypes", "_ctypes_test", "_xxsubinterpreters",
                             "_xxtestfuzz", "_testcapi", "_testinternalcapi", "_testbuffer", "_testclinic",
                             "_testimportmultiple", "_testmultiphase", "_posixshmem", "_multiprocessing", "_sqlite3",
                             "_dbm", "_gdbm", "readline", "nis", "ossaudiodev", "_tkinter", "posix"})
# posix functions that change the world outside the process without raising an audit event.
_UNAUDITED = ("mkfifo", "mknod", "pidfd_open", "setpriority", "sched_setaffinity", "sched_setparam",
              "sched_setscheduler")


def _libc():
    """libc through ctypes, created per call so no ctypes object outlives the setup that needs it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc, ctypes


def _call(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _prctl(option: int, value: int) -> int:
    libc, _ = _libc()
    return libc.prctl(option, value, 0, 0, 0)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    libc, _ = _libc()
    source_b, target_b, fstype_b, data_b = (None if s is None else os.fsencode(s)
                                            for s in (source, target, fstype, data))
    _call(libc.mount(source_b, target_b, fstype_b, flags, data_b), f"mount {target}")


def _mountpoints() -> list[tuple[str, int]]:
    """Every mount point with the flags a read-only bind remount must keep (locked in a user namespace)."""
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            fields = line.split()
            options = fields[5].split(",")
            flags = sum(flag for name, flag in _KEPT_MOUNT_FLAGS.items() if name in options)
            if not flags & (MS_NOATIME | MS_RELATIME):
                flags |= MS_STRICTATIME
            path = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
            mounts.append((path, flags))
    return mounts


def _blocked_ancestor(path: str) -> str | None:
    """The first directory on `path` that other users cannot traverse (the stdlib under /root, say)."""
    parts = path.split("/")
    for end in range(2, len(parts) + 1):
        directory = "/".join(parts[:end])
        if not os.stat(directory).st_mode & 0o001:
            return directory
    return None


def _read_only_fs(work: str, uid: int, stdlib: str, blocked: str | None) -> None:
    """Private tmpfs at `work`, everything else read-only; `blocked` is replaced by a tmpfs through which
    only the standard library is visible, so a private uid can still import it."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    if blocked:
        keep = os.open(stdlib, os.O_PATH | os.O_DIRECTORY)
        _mount("tmpfs", blocked, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
        os.makedirs(stdlib, 0o755)
        _mount(f"/proc/self/fd/{keep}", stdlib, None, MS_BIND | MS_REC)
        os.close(keep)
    _mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0700,size={_WORK_MB}m,uid={uid},gid={uid}")
    for path, flags in _mountpoints():
        if path != work:
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | flags)


def _unshare(flags: int) -> bool:
    """Enter new namespaces; a non-root user needs a user namespace too, mapping its own ids to themselves."""
    outer_uid, outer_gid = os.getuid(), os.getgid()
    libc, _ = _libc()
    try:
        _call(libc.unshare(flags | (_CLONE_NEWUSER if outer_uid else 0)), "unshare")
    except OSError:
        return False
    if outer_uid:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{outer_uid} {outer_uid} 1"),
                           ("gid_map", f"{outer_gid} {outer_gid} 1")):
            with open(f"/proc/self/{name}", "w", encoding="ascii") as map_file:
                map_file.write(text)
    return True


def _isolate(wanted: frozenset[str], work: str, uid: int | None) -> tuple[list[str], int | None]:
    """Set up the wanted kernel layers; returns those achieved and the uid the program will run as (None: ours).
    A private uid needs the standard library readable by others, or a mount namespace to make it so."""
    stdlib = os.path.commonpath([os.path.realpath(p) for p in [sys.base_prefix, sys.base_exec_prefix, *sys.path]
                                 if os.path.isdir(p)])
    blocked = _blocked_ancestor(stdlib) if uid is not None else None
    flags = sum(flag for layer, flag in _CLONE.items() if layer in wanted)
    layers = []
    if flags and _unshare(flags):
        layers = [layer for layer in ("no-network", "pid-namespace") if layer in wanted]
        if "read-only-fs" in wanted:
            try:
                _read_only_fs(work, os.getuid() if uid is None else uid, stdlib, blocked)
                layers.append("read-only-fs")
            except OSError as error:
                print(f"sandbox: read-only mounts failed: {error}", file=sys.stderr)
    if blocked and "read-only-fs" not in layers:
        uid = None
    elif uid is not None and "read-only-fs" not in layers:
        os.chown(work, uid, uid)
    return layers + (["private-uid"] if uid is not None else []), uid


def _drop_privileges(uid: int | None) -> None:
    """No capabilities, no way to regain them through exec, and (as root) a uid of the program's own.
    Dropping the bounding set fails past the last capability or without CAP_SETPCAP; both are harmless."""
    libc, ctypes = _libc()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    for capability in range(64):
        libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    _call(libc.capset(header, data), "capset")
    _call(_prctl(PR_SET_NO_NEW_PRIVS, 1), "prctl(PR_SET_NO_NEW_PRIVS)")


def _install_guard(root: str) -> None:
    """Add the audit hook confining the program to `root`.

    The hook is one function whose closure cells hold only immutable values and C functions, bound
    here: nothing the program rebinds later (its globals, the runner's, builtins, `os`, `os.path`) is
    read by it, it never calls Python code the program could patch, and a frame of it (reachable from
    a refusal's traceback) shows values, not functions whose shared cells could be overwritten.
    Paths are judged lexically: the working directory starts empty and links cannot be made in it,
    so no symlink leads out. `dir_fd=` cannot point outside: directory descriptors outside `root` are
    refused, and relative paths may not contain "..". Extension modules load only from the standard
    library's lib-dynload, since any other one (cffi's, say) could call C freely.
    """
    exact, text, raw, number = type, str, bytes, int
    decode, getcwd, stat, refuse, failure = bytes.decode, os.getcwd, os.stat, PermissionError, (OSError, ValueError)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    inside = (root + "/",)
    extensions = tuple({resolve(p) + "/" for p in sys.path if os.path.basename(p) == "lib-dynload"
                        for resolve in (os.path.realpath, os.path.abspath)})
    one_path, two_paths = _ONE_PATH_EVENTS, _TWO_PATH_EVENTS
    denied_events, denied_modules = _DENIED_EVENTS, _DENIED_MODULES

    def guard(event, args):
        if exact(event) is not text:
            return
        opening = event == "open"
        if event == "import":
            if exact(args[0]) is not text or args[0].rpartition(".")[2] in denied_modules:
                raise refuse(f"sandbox: importing {args[0] if exact(args[0]) is text else 'that'} is not allowed")
            paths, allowed = (() if args[1] is None else args[1:2]), extensions
        elif event.startswith(denied_events):
            raise refuse(f"sandbox: {event} is not allowed")
        elif opening or event in one_path or event in two_paths:
            paths, allowed = args[:2 if event in two_paths else 1], inside
        else:
            return
        for path in paths:
            if opening and exact(path) is number:
                continue
            if exact(path) is raw:
                path = decode(path, "utf-8", "surrogateescape")
            elif exact(path) is not text:
                raise refuse(f"sandbox: {event} needs a str path")
            parts = path.split("/")
            if not path.startswith("/"):
                if ".." in parts:
                    raise refuse(f"sandbox: {event} of a relative path with '..' is not allowed; use an absolute path")
                parts = getcwd().split("/") + parts
            kept = []
            for part in parts:
                if part == "..":
                    kept = kept[:-1]
                elif part and part != ".":
                    kept.append(part)
            full = "/" + "/".join(kept)
            if (full + "/").startswith(allowed):
                continue
            if allowed is extensions:
                raise refuse(f"sandbox: loading {full} is not allowed (only standard-library extensions)")
            if not opening or exact(args[2]) is not number or args[2] & write_flags:
                raise refuse(f"sandbox: {event} of {full} outside the working directory is not allowed")
            try:
                mode = stat(full).st_mode
            except failure:
                continue
            if mode & 0o170000 == 0o040000:
                raise refuse(f"sandbox: opening the directory {full} outside the working directory is not allowed")

    for name in _UNAUDITED:
        stub = _refusing(f"os.{name}")
        for module in (os, sys.modules["posix"]):
            if name in module.__dict__:
                module.__dict__[name] = stub
    sys.addaudithook(guard)


def _refusing(name: str):
    """A stand-in for a function CPython does not audit (re-importing posix to get it back is refused)."""
    def refuse(*args, **kwargs):
        raise PermissionError(f"sandbox: {name} is not allowed")
    return refuse


def _limit(memory_mb: int, timeout_s: float) -> None:
    for limit, value in ((resource.RLIMIT_AS, memory_mb << 20), (resource.RLIMIT_CPU, int(timeout_s) + 1),
                         (resource.RLIMIT_FSIZE, 16 << 20), (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_NPROC, _NPROC)):
        resource.setrlimit(limit, (value, value))


def _run_program(source: str, filename: str) -> None:
    """Run the program as `__main__` in a module of its own: none of the runner's names are in its globals."""
    code = compile(source, filename, "exec")
    for name in [name for name in sys.modules if name.partition(".")[0] in ("ctypes", "_ctypes")]:
        del sys.modules[name]
    module = type(sys)("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"], sys.argv = module, [filename]
    exec(code, module.__dict__)


def _children() -> list[int] | None:
    """Our children, or None where the kernel does not list them (no CONFIG_PROC_CHILDREN)."""
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children", encoding="ascii") as children:
            return [int(pid) for pid in children.read().split()]
    except OSError:
        return None


def _kill_descendants() -> None:
    """Kill and reap every descendant: as a subreaper, orphans are re-parented to us, so no child left means none.
    Where children cannot be listed, only the dead are reaped (the layer is then reported missing)."""
    while True:
        children = _children()
        for pid in children or ():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            if os.waitpid(-1, 0 if children is not None else os.WNOHANG) == (0, 0):
                return
        except ChildProcessError:
            return


def _supervise(child: int, timeout_s: float) -> tuple[int, bool]:
    """Wait for the program (SIGCHLD is blocked, so sigtimedwait wakes on it); SIGKILL it at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            return os.waitstatus_to_exitcode(status), False
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            return -signal.SIGKILL, True
        signal.sigtimedwait([signal.SIGCHLD], left)


def _runner(argv: list[str]) -> int:
    """Script entry: argv = work dir, program file, status fd, timeout s, memory MiB, wanted layers (comma list).
    Returns (in the child, as its exit status) only when the program ran to its end."""
    work, program, status_fd, timeout_s, memory_mb = argv[0], argv[1], int(argv[2]), float(argv[3]), int(argv[4])
    wanted = frozenset(argv[5].split(","))
    with open(program, encoding="utf-8") as source_file:
        source = source_file.read()
    os.umask(0o022)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # an ignored SIGCHLD survives exec and would auto-reap the program
    uid = _UID_BASE + os.getpid() if os.geteuid() == 0 and "private-uid" in wanted else None
    layers, uid = _isolate(wanted, work, uid)
    if _prctl(PR_SET_CHILD_SUBREAPER, 1) == 0 and _children() == []:
        layers.append("kill-descendants")
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    child = os.fork()
    if child == 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.chdir(work)
        _drop_privileges(uid)
        _limit(memory_mb, timeout_s)
        os.closerange(3, max(64, status_fd + 1))  # the status pipe keeps the parent's fd number, which may be >= 64
        if "audit-hook" in wanted:
            _install_guard(os.path.realpath(work))
        _run_program(source, program)
        return 0
    returncode, timed_out = _supervise(child, timeout_s)
    _kill_descendants()
    layers += ["rlimits"] + (["audit-hook"] if "audit-hook" in wanted else [])
    os.write(status_fd, f"{returncode} {int(timed_out)} {','.join(sorted(layers))}".encode())
    os._exit(0)  # nothing left to flush or clean up; skipping interpreter teardown saves a few ms per run


if __name__ == "__main__":
    raise SystemExit(_runner(sys.argv[1:]))

import contextlib  # noqa: E402  (library side: see the module docstring)
import logging  # noqa: E402
import select  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import cache  # noqa: E402

log = logging.getLogger(__name__)
_GRACE_S = 10.0  # interpreter start-up and namespace set-up, on top of the program's own timeout


@dataclass(frozen=True)
class SandboxResult:
    """`isolation`: the layers (names from `LAYERS`) that were active for this run."""

    passed: bool
    returncode: int | None
    timed_out: bool
    output: str
    isolation: tuple[str, ...] = ()


def run_python(code: str, timeout_s: float = 5.0, memory_mb: int = 1024, output_chars: int = 2000) -> SandboxResult:
    """Run `code` as a script with every layer this machine offers; `passed` means it exited 0 within the limits.
    `output` is the last `output_chars` bytes of what it printed."""
    return _run(code, timeout_s, memory_mb, LAYERS, output_chars)


@cache
def isolation() -> tuple[str, ...]:
    """The layers `run_python` gets on this machine (probed once with an empty program)."""
    return run_python("pass").isolation


@cache
def _warn_missing(missing: tuple[str, ...]) -> None:
    log.warning("code sandbox: %s not available here (see ccoe.domains.sandbox); running without", ", ".join(missing))


def _run(code: str, timeout_s: float, memory_mb: int, wanted: tuple[str, ...], output_chars: int = 2000) -> SandboxResult:
    """`run_python` with a chosen set of optional layers (tests use it to check each layer on its own)."""
    with tempfile.TemporaryDirectory(prefix="ccoe-sandbox-", ignore_cleanup_errors=True) as tmp:
        os.chmod(tmp, 0o711)
        work, program, output = (os.path.join(tmp, name) for name in ("work", "program.py", "output"))
        os.mkdir(work, 0o700)
        with open(program, "w", encoding="utf-8") as program_file:
            program_file.write(code)
        os.chmod(program, 0o644)
        out_fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        status_r, status_w = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), work, program, str(status_w),
                 str(timeout_s), str(memory_mb), ",".join(wanted)],
                cwd=work, env={"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"},
                stdin=subprocess.DEVNULL, stdout=out_fd, stderr=out_fd, pass_fds=(status_w,), start_new_session=True,
            )
        finally:
            os.close(out_fd)
            os.close(status_w)
        status = _read_status(status_r, process, timeout_s + _GRACE_S)
        with open(output, "rb") as out_file:
            out_file.seek(max(0, os.fstat(out_file.fileno()).st_size - output_chars))
            text = out_file.read().decode(errors="replace")
    if not status:
        raise RuntimeError(f"the code sandbox's runner failed (exit {process.returncode}); its output:\n{text}")
    returncode, timed_out, layers = status.split(" ")
    achieved = tuple(layer for layer in LAYERS if layer in layers.split(","))
    if missing := tuple(layer for layer in wanted if layer not in achieved):
        _warn_missing(missing)
    timed_out = timed_out == "1"
    return SandboxResult(not timed_out and returncode == "0", None if timed_out else int(returncode), timed_out, text,
                         achieved)


def _read_status(fd: int, process: subprocess.Popen, limit_s: float) -> str:
    """The runner's status line; it arrives with EOF once the runner has killed every sandboxed process."""
    chunks, deadline = [], time.monotonic() + limit_s
    with os.fdopen(fd, "rb", buffering=0) as status:
        while (left := deadline - time.monotonic()) > 0 and select.select([status], [], [], left)[0]:
            if not (chunk := status.read(4096)):
                break
            chunks.append(chunk)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return b"".join(chunks).decode()
