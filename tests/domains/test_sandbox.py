"""The code sandbox: HumanEval-style programs run normally, and each known escape is stopped.

The escapes are the red team's (issue 12): a write through `os.open(dir_fd=)`, `_posixsubprocess.fork_exec`,
switching the guard off by rebinding its names, and setsid() children outliving the program. Each is run
against every layer set that must stop it on its own: the CPython audit hook alone ("hook"), the kernel
layers alone ("kernel", skipped where the machine cannot unshare namespaces), and everything ("all").
"""

import os
import socket
import time

import pytest

from ccoe.domains.sandbox import LAYERS, _run, isolation, run_python

HOOK = ("audit-hook",)
KERNEL = tuple(layer for layer in LAYERS if layer != "audit-hook")
NAMESPACES = {"no-network", "pid-namespace", "read-only-fs"}
MODES = {"all": LAYERS, "hook": HOOK, "kernel": KERNEL}


def sandboxed(code: str, wanted: tuple[str, ...], timeout_s: float = 5.0):
    result = _run(ATTEMPT + code, timeout_s, 1024, wanted)
    if wanted == KERNEL and not NAMESPACES <= set(result.isolation):
        pytest.skip(f"this machine cannot unshare namespaces: {sorted(NAMESPACES - set(result.isolation))}")
    return result


def outcomes(result) -> dict[str, str]:
    """label -> "ESCAPED" or the error that stopped it, from the programs' `attempt` lines."""
    lines = [line.split(" ", 2) for line in result.output.splitlines() if line.startswith(("ESCAPED ", "refused "))]
    return {words[1]: "ESCAPED" if words[0] == "ESCAPED" else words[2] for words in lines}


def assert_refused(result, labels: set[str], by_guard: bool):
    """Each attempt ran and failed; `by_guard`: the audit hook refused every one (not a later layer)."""
    seen = outcomes(result)
    assert set(seen) == labels and "ESCAPED" not in seen.values(), result.output
    if by_guard:
        assert all(message.startswith("sandbox: ") for message in seen.values()), result.output


ATTEMPT = """
def attempt(label, action):
    try:
        action()
        print("ESCAPED", label, flush=True)
    except BaseException as error:
        print("refused", label, error, flush=True)
"""

# Spawns argv through _posixsubprocess.fork_exec (CPython 3.11's signature), the call subprocess makes.
FORK_EXEC = """
import os
def spawn(fork_exec, argv):
    r, w = os.pipe()
    fork_exec([os.fsencode(a) for a in argv], [os.fsencode(argv[0])], True, (w,), None, None,
              -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None, False)
    os.close(w)
    os.read(r, 100)
"""


def test_humaneval_style_programs_pass_fail_and_time_out():
    solution = ("from typing import List\nimport collections, functools, heapq, itertools, math, re\n\n"
                "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
                "    return any(abs(a - b) < threshold for a, b in itertools.combinations(numbers, 2))\n\n")
    check = "assert has_close_elements([1.0, 2.8, 3.0], 0.3)\nassert not has_close_elements([1.0, 2.0], 0.5)\n"
    correct = run_python(solution + check)
    assert correct.passed and correct.returncode == 0, correct.output
    wrong = run_python(solution.replace("< threshold", "> threshold") + check)
    assert not wrong.passed and wrong.returncode == 1 and "AssertionError" in wrong.output
    looping = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert looping.timed_out and not looping.passed and looping.returncode is None


def test_working_directory_is_empty_private_and_writable():
    result = run_python(
        "import os, tempfile\n"
        "assert os.listdir('.') == [], os.listdir('.')\n"
        "assert os.stat('.').st_mode & 0o777 == 0o700\n"
        "os.makedirs('a/b')\n"
        "with open('a/b/c.txt', 'w') as f:\n    f.write('x')\n"
        "assert open(os.path.abspath('a/b/c.txt')).read() == 'x'\n"
        "with tempfile.NamedTemporaryFile() as f:\n    f.write(b'y')\n"
        "os.rename('a/b/c.txt', 'a/d.txt')\nos.remove('a/d.txt')\n"
    )
    assert result.passed, result.output


def test_isolation_reports_the_active_layers():
    layers = isolation()
    assert {"audit-hook", "rlimits", "kill-descendants"} <= set(layers) <= set(LAYERS)
    assert run_python("pass").isolation == layers


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_dir_fd_write_outside_is_refused(mode, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o777)
    result = sandboxed(f"""
import os
def through_outside_fd():
    fd = os.open({str(outside)!r}, os.O_RDONLY)
    os.write(os.open("marker", os.O_WRONLY | os.O_CREAT, dir_fd=fd), b"x")

def through_inside_fd_and_dotdot():
    # a guard resolving "../../marker" from the deep cwd sees it inside; the kernel, from the fd, goes outside
    os.makedirs("a/b/c")
    fd = os.open(".", os.O_RDONLY)
    os.chdir("a/b/c")
    os.write(os.open("../../marker", os.O_WRONLY | os.O_CREAT, dir_fd=fd), b"x")

attempt("outside-fd", through_outside_fd)
attempt("dotdot", through_inside_fd_and_dotdot)
""", MODES[mode])
    assert not (outside / "marker").exists()
    assert_refused(result, {"outside-fd", "dotdot"}, by_guard=mode == "hook")


@pytest.mark.parametrize("mode", ["all", "hook"])
def test_b_posixsubprocess_fork_exec_is_refused(mode, tmp_path):
    marker = tmp_path / "marker"
    os.chmod(tmp_path, 0o777)
    result = sandboxed(FORK_EXEC + f"""
import importlib.util, _imp, glob, sys
command = ["/bin/sh", "-c", "echo ESCAPED > {marker}"]

def by_import():
    import _posixsubprocess
    spawn(_posixsubprocess.fork_exec, command)

def by_create_dynamic():  # the extension under a dotted name: its init function is still PyInit__posixsubprocess
    so = glob.glob(sys.path[-1] + "/_posixsubprocess*.so")[0]
    spawn(_imp.create_dynamic(importlib.util.spec_from_file_location("x._posixsubprocess", so)).fork_exec, command)

attempt("import", by_import)
attempt("create_dynamic", by_create_dynamic)
""", MODES[mode])
    time.sleep(0.2)
    assert not marker.exists(), result.output
    assert_refused(result, {"import", "create_dynamic"}, by_guard=True)


@pytest.mark.parametrize("mode", ["all", "hook"])
def test_extension_modules_load_only_from_the_standard_library(mode, tmp_path):
    cffi = pytest.importorskip("_cffi_backend")
    marker = tmp_path / "marker"
    os.chmod(tmp_path, 0o777)
    result = sandboxed(f"""
import importlib.util, _imp, math, _hashlib, _json  # the standard library's own extensions load

def call_system():  # cffi, from site-packages, can call any C function
    m = _imp.create_dynamic(importlib.util.spec_from_file_location("_cffi_backend", {cffi.__file__!r}))
    char_p = m.new_pointer_type(m.new_primitive_type("char"))
    system = m.load_library(None).load_function(m.new_function_type((char_p,), m.new_primitive_type("int"), False),
                                                "system")
    system(b"echo ESCAPED > {marker}")

attempt("cffi", call_system)
""", MODES[mode])
    assert not marker.exists()
    assert_refused(result, {"cffi"}, by_guard=True)


@pytest.mark.parametrize("mode", ["all", "hook"])
def test_c_rebinding_names_does_not_switch_the_guard_off(mode, tmp_path):
    marker = tmp_path / "marker"
    os.chmod(tmp_path, 0o777)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        result = sandboxed(f"""
import builtins, os, os.path, sys
off = dict(_DENIED=(), _inside=lambda p: True, _ROOT="/", _WRITE_FLAGS=0, _PATH_EVENTS=set(), _guard=None,
           _DENIED_EVENTS=(), _DENIED_MODULES=frozenset(), _ONE_PATH_EVENTS=frozenset(), _UNAUDITED=())
globals().update(off)
frame = sys._getframe()
while frame is not None:  # the runner's globals too, reached through the frames
    frame.f_globals.update(off)
    frame = frame.f_back

def connect():
    import socket
    socket.create_connection(("127.0.0.1", {server.getsockname()[1]}), timeout=2)

attempt("socket", connect)
attempt("gc-objects", lambda: __import__("gc").get_objects())
attempt("gc-referrers", lambda: __import__("gc").get_referrers(sys))
attempt("settrace", lambda: sys.settrace(lambda *a: None))
attempt("code", lambda: (lambda: 0).__code__.replace())

def through_the_guards_frame():  # overwrite every closure cell of any function the refusal's frames show
    try:
        open({str(marker)!r}, "w")
    except PermissionError as error:
        tb = error.__traceback__
    while tb:
        for value in list(tb.tb_frame.f_locals.values()):
            for cell in getattr(value, "__closure__", None) or ():
                contents = cell.cell_contents
                cell.cell_contents = ("/" if isinstance(contents, str) else type(contents)() if isinstance(
                    contents, (tuple, frozenset)) else (lambda *a, **k: True) if callable(contents) else contents)
        tb = tb.tb_next
    open({str(marker)!r}, "w").write("x")

attempt("guard-frame", through_the_guards_frame)
# what a guard looking names up when it runs would read (this breaks most of the stdlib, so it comes last)
os.path.realpath = os.path.abspath = os.path.normpath = lambda p: os.getcwd()
builtins.isinstance = lambda *a: False
builtins.any = lambda *a: False
attempt("write", lambda: open({str(marker)!r}, "w").write("x"))
""", MODES[mode])
        with pytest.raises(socket.timeout):
            server.accept()
    assert not marker.exists()
    labels = {"socket", "gc-objects", "gc-referrers", "settrace", "code", "guard-frame", "write"}
    assert_refused(result, labels, by_guard=True)


SETSID_CHILD = '''
import os, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    print("PID", os.readlink("/proc/self"), flush=True)  # its pid outside any PID namespace
    os.write(w, b".")
    time.sleep(30)
    os._exit(0)
os.read(r, 1)
'''


@pytest.mark.parametrize("then", ["exit", "time out"])
@pytest.mark.parametrize("mode", ["kernel", "no optional layer"])
def test_d_setsid_children_are_killed(mode, then):
    program = SETSID_CHILD + ("while True:\n    pass\n" if then == "time out" else "")
    result = sandboxed(program, KERNEL if mode == "kernel" else (), timeout_s=2.0)
    if mode != "kernel" and "kill-descendants" not in result.isolation:
        pytest.skip("this kernel does not list a process's children (CONFIG_PROC_CHILDREN)")
    assert result.timed_out == (then == "time out"), result.output
    pid = int(result.output.split("PID ")[1].split()[0])
    assert not os.path.exists(f"/proc/{pid}"), f"the setsid child {pid} outlived the sandbox"


def test_d_setsid_children_cannot_be_started_with_the_hook():
    result = run_python(SETSID_CHILD)
    assert not result.passed and "sandbox: os.fork is not allowed" in result.output


@pytest.mark.parametrize("mode", sorted(MODES))
def test_socket_to_localhost_is_refused(mode):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        port = server.getsockname()[1]
        connect = f"socket.create_connection(('127.0.0.1', {port}), 2)"
        result = sandboxed(f"import socket\nattempt('socket', lambda: {connect})", MODES[mode])
        with pytest.raises(socket.timeout):
            server.accept()
    if mode == "kernel":
        assert_refused(result, {"socket"}, by_guard=False)
    else:
        assert "sandbox: importing _socket is not allowed" in result.output, result.output


@pytest.mark.parametrize("mode", sorted(MODES))
def test_write_outside_is_refused(mode, tmp_path):
    os.chmod(tmp_path, 0o777)
    targets = [tmp_path / "marker", tmp_path / "fifo"]
    result = sandboxed(f"""
import os
attempt("open", lambda: open({str(targets[0])!r}, "w").write("x"))
attempt("mkfifo", lambda: os.mkfifo({str(targets[1])!r}))  # CPython raises no audit event for mkfifo
""", MODES[mode])
    assert not any(target.exists() for target in targets)
    assert_refused(result, {"open", "mkfifo"}, by_guard=mode == "hook")


def test_the_status_pipe_is_closed_in_the_program_even_at_a_high_fd_number():
    """pass_fds keeps the parent's fd number: with many files open here the pipe lands above 64, and a
    program that could write to it would garble the runner's status line."""
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(80)]
    try:
        probe = "import os\nfor fd in range(3, 256):\n    try:\n        os.fstat(fd)\n        print('open', fd)\n    except OSError:\n        pass\n"
        result = run_python(probe)
    finally:
        for fd in held:
            os.close(fd)
    assert result.passed and "open" not in result.output, result.output
