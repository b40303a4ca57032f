"""Run untrusted Python (a policy's completion) in a separate, limited process. Never in the trainer's.

One run = one `python -I -S` process (isolated mode, no site-packages unless `site_packages=True`) in a
fresh session, in an empty temporary directory, with:

- a wall-clock `timeout`; on expiry the whole process group is killed (SIGKILL);
- resource limits set in `preexec_fn` (between fork and exec): address space (`memory_mb`),
  CPU seconds (timeout + 1), file size (stdout/stderr are files, capped at `OUTPUT_BYTES`), no core
  dumps, and RLIMIT_NPROC = 0, so the program can start no process or thread (for non-root users);
- on Linux x86_64/aarch64, a seccomp filter installed by the bootstrap before the program runs that
  makes fork, vfork, clone and clone3 fail with EAGAIN (so no threads either). RLIMIT_NPROC does not
  bind root, so this is what contains a fork bomb when the trainer runs as root (as in many
  containers). As root without seccomp the bootstrap refuses to run the program (fail closed), and
  `check_containment` (run once per process before any reward code) turns that into a RewardError;
- a minimal environment (no PYTHON* variables, one BLAS thread), stdin from a file, stdout and
  stderr to files.

Threat model: this guards against what a policy stumbles into or learns to exploit cheaply
(infinite loops, fork bombs, memory blow-ups, floods of output, exiting early). It is not a
security boundary against code written to attack the host: the program runs as the trainer's user
and can read its files. For that, run the trainer in a container or VM.
"""

from __future__ import annotations

import functools
import os
import platform
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aligntune.errors import RewardError

OUTPUT_BYTES = 1 << 20  # cap on each of stdout and stderr (RLIMIT_FSIZE): writing more kills the program
EXIT_NO_CONTAINMENT = 97  # the bootstrap's exit code when it cannot block process creation as root

# (audit arch, syscall numbers of fork, vfork, clone, clone3) for the seccomp filter.
_SECCOMP_ARCH = {"x86_64": (0xC000003E, (57, 58, 56, 435)), "aarch64": (0xC00000B7, (220, 435))}

# Runs first in the child (`python -I -c BOOTSTRAP main.py ARCH NUMBERS`): block process creation, then
# run the program as __main__. The program file is read and deleted before the program starts.
BOOTSTRAP = r'''
import os, sys
def _block_process_creation(arch, numbers):
    import ctypes, struct
    def op(code, k, jt=0, jf=0):
        return struct.pack("HBBI", code, jt, jf, k)
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    allow, deny = 0x7FFF0000, 0x00050000 | 11  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EAGAIN
    # arch mismatch -> deny; x32 syscall numbers (>= 1<<30) -> deny; listed numbers -> deny; else allow
    prog = [op(ld, 4), op(jeq, arch, 1, 0), op(ret, deny), op(ld, 0), op(jge, 0x40000000, len(numbers) + 1, 0)]
    prog += [op(jeq, nr, len(numbers) - i, 0) for i, nr in enumerate(numbers)]
    prog += [op(ret, allow), op(ret, deny)]
    buf = ctypes.create_string_buffer(b"".join(prog))
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Prog(len(prog), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    # PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with SECCOMP_MODE_FILTER
    return libc.prctl(38, 1, 0, 0, 0) == 0 and libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0
_path, _arch, _numbers = sys.argv[1:4]
if not (_arch != "none" and _block_process_creation(int(_arch), [int(n) for n in _numbers.split(",")])) \
        and os.geteuid() == 0:
    os._exit(97)  # root is not bound by RLIMIT_NPROC: refuse to run the program uncontained
with open(_path) as _f:
    _source = _f.read()
os.unlink(_path)
sys.argv = [_path]
del _f, _path, _arch, _numbers, _block_process_creation
exec(compile(_source, "main.py", "exec"), {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__})
'''

# Proves containment once per process: the run must fail to fork (if it forks, the child exits at once).
PROBE = """
import os
try:
    pid = os.fork()
except OSError:
    print("contained")
else:
    if pid == 0:
        os._exit(0)
    print("forked")
"""


@dataclass
class RunResult:
    """What one sandboxed run did. `returncode` is negative for a signal (e.g. -9 after a timeout)."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float
    pid: int  # also the id of its process group and session, all killed when the run ends

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def seccomp_spec() -> tuple[int, tuple[int, ...]] | None:
    """(audit arch, syscall numbers) for this machine, or None where the filter is not available."""
    return _SECCOMP_ARCH.get(platform.machine()) if sys.platform == "linux" else None


def _limits(memory_bytes: int, cpu_seconds: int):
    def apply() -> None:  # runs in the child between fork and exec: plain setrlimit calls only
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_BYTES, OUTPUT_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))

    return apply


def _kill_group(pgid: int, grace: float = 2.0) -> None:
    """SIGKILL every process in the group, then wait (up to `grace` s) until none is left."""
    deadline = time.monotonic() + grace
    sig = signal.SIGKILL
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return  # the group is gone
        sig = 0  # then only probe: killed processes take a moment to disappear (and be reaped)
        time.sleep(0.005)


def _exited_within(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait for `proc` up to `timeout` s. A pidfd wakes us the moment it exits; Popen.wait(timeout) polls
    with sleeps that grow to 50 ms, which would add tens of ms to every short run."""
    try:
        fd = os.pidfd_open(proc.pid) if hasattr(os, "pidfd_open") else None
    except OSError:  # a kernel without pidfds (Linux < 5.3)
        fd = None
    if fd is not None:
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
        return bool(ready)
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def run_python(source: str, stdin: str = "", timeout: float = 5.0, memory_mb: int = 512,
               site_packages: bool = False) -> RunResult:
    """Run `source` as a Python program in a separate limited process (see the module docstring)."""
    env = {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    spec = seccomp_spec()
    arch, numbers = (str(spec[0]), ",".join(map(str, spec[1]))) if spec else ("none", "")
    command = [sys.executable, "-I", *([] if site_packages else ["-S"]), "-c", BOOTSTRAP, "main.py", arch, numbers]
    with tempfile.TemporaryDirectory(prefix="aligntune-sandbox-") as tmp:
        work = Path(tmp)
        (work / "main.py").write_text(source)
        (work / "stdin").write_text(stdin)
        with open(work / "stdin", "rb") as fin, open(work / "stdout", "w+b") as fout, open(work / "stderr", "w+b") as ferr:
            (work / "stdin").unlink()
            start = time.monotonic()
            proc = subprocess.Popen(command, stdin=fin, stdout=fout, stderr=ferr, cwd=work, env=env,
                                    start_new_session=True, close_fds=True,
                                    preexec_fn=_limits(memory_mb << 20, int(timeout) + 1))
            try:
                timed_out = not _exited_within(proc, timeout)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                _kill_group(proc.pid)  # anything the program left behind
            seconds = time.monotonic() - start
            fout.seek(0)
            ferr.seek(0)
            stdout = fout.read(OUTPUT_BYTES).decode("utf-8", "replace")
            stderr = ferr.read(OUTPUT_BYTES).decode("utf-8", "replace")
    return RunResult(proc.returncode, stdout, stderr, timed_out, seconds, proc.pid)


@functools.lru_cache(maxsize=1)
def check_containment() -> None:
    """Raise RewardError unless a sandboxed program here really cannot fork (checked once per process)."""
    result = run_python(PROBE, timeout=10.0)
    if result.stdout.strip() == "contained":
        return
    if result.returncode == EXIT_NO_CONTAINMENT:
        why = "seccomp is not available here, and RLIMIT_NPROC does not bind root"
    else:
        why = f"a test program's fork was not refused (output {result.stdout.strip()!r}, stderr {result.stderr.strip()[-200:]!r})"
    raise RewardError(f"Cannot run code for a reward safely on this machine: {why}.",
                      "Run training as a non-root user (RLIMIT_NPROC then applies), on Linux x86_64/aarch64 (seccomp), "
                      "or drop the code-execution reward.")
