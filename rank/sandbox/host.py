"""The harness side of rank.sandbox: jobs, configuration, verdicts and the pool of sandbox workers.

    from rank.sandbox import Sandbox, SandboxConfig, Job
    with Sandbox(SandboxConfig(workers=2, timeout_s=5.0)) as sb:
        verdicts = sb.run([Job(id="c1", code="def f(x):\\n    return x+1\\n", tests=["assert f(1) == 2"])])

Each worker is one bubblewrap sandbox (no network, read-only minimal root, private /tmp and /dev/shm
bounded in bytes and inodes, own PID namespace, a syscall filter, started as an unprivileged uid)
holding a warm fork-server (rank/sandbox/server.py and its helpers wire, plan, tester, seccomp);
workers run in parallel threads of this process. The threat model and its tests: docs/sandbox.md.
Timeouts: `timeout_s` bounds the program's top level and each test separately; `job_timeout_s` bounds
a whole job. CLI: python -m rank.execute --in IN.jsonl --out OUT.jsonl
"""
from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator

from rank.sandbox import seccomp
from rank.sandbox import wire as proto
from rank.records import Verdict
from rank.sandbox.runners import RUNNERS


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot start, and unsafe execution was not requested."""


@dataclass
class SandboxConfig:
    # Sandboxes run in parallel, one warm server each. A worker waits on its candidate about half the
    # time (hand-offs between processes), so two per core keep the cores busy.
    workers: int = field(default_factory=lambda: min(32, 2 * (os.cpu_count() or 1)))
    timeout_s: float = 5.0           # per test, and for the program's top level
    job_timeout_s: float = 30.0      # whole job; tests not reached count as not passed
    memory_mb: int = 1024            # address space of each candidate process (RLIMIT_AS)
    procs: int = 64                  # processes of the sandbox uid, per sandbox
    file_mb: int = 16                # largest file (and captured output) a candidate may write
    open_files: int = 64
    tmp_mb: int = 64                 # size of the private /tmp and /dev/shm
    tmp_inodes: int = 8192           # files and directories each of them may hold
    output_limit: int = 4096         # characters of stdout/error kept in a verdict
    unsafe: bool = False             # run without bubblewrap (rlimits + process group only); warns
    seccomp: bool = True             # the syscall filter (rank/sandbox/seccomp.py); off only to measure it
    python: str | None = None        # interpreter inside the sandbox (default: one the uid can run)
    language: str = "python"         # a Sandbox runs one language: rank.sandbox.runners.RUNNERS[language]
    bwrap: str = "bwrap"
    uid: int = 65534                 # uid/gid the sandbox starts as when this process is root
    gid: int = 65534

    def __post_init__(self):
        for name in ("workers", "memory_mb", "procs", "file_mb", "open_files", "tmp_mb", "tmp_inodes",
                     "output_limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SandboxConfig.{name} must be a positive integer, got {value!r}")
        if self.language not in RUNNERS:
            raise ValueError(f"SandboxConfig.language {self.language!r} has no runner "
                             f"(known: {', '.join(sorted(RUNNERS))})")
        for name in ("timeout_s", "job_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"SandboxConfig.{name} must be a positive number, got {value!r}")


@dataclass
class Job:
    """One candidate program and its tests: independent snippets in `tests`, or a HumanEval-style
    `check(candidate)` function in `test` with `entry_point` (then `code` is the whole program).
    Build it from a Problem with rank.sandbox.job_for. The tests take from the program only the
    `entry_point` (for snippets optional: without it, the names they read but neither bind nor find
    among the builtins) and the functions `prompt` declares without implementing; what `prompt`
    implements runs in the server (docs/sandbox.md)."""
    id: str
    code: str
    tests: list[str] | None = None
    test: str | None = None
    entry_point: str | None = None
    language: str = "python"
    prompt: str | None = None       # the problem's prompt: names it implements are the tests' own

    def problem(self) -> tuple[str, str] | None:
        """(field, message) for the first thing wrong with this job, or None."""
        if not isinstance(self.id, str) or not self.id:
            return "id", "must be a non-empty string"
        if not isinstance(self.code, str):
            return "code", "must be a string"
        if self.prompt is not None and not isinstance(self.prompt, str):
            return "prompt", "must be a string"
        if self.language not in RUNNERS:
            return "language", f"{self.language!r} has no runner (known: {', '.join(sorted(RUNNERS))})"
        if (self.tests is None) == (self.test is None):
            return "tests", "give exactly one of 'tests' (a list of snippets) or 'test' (a check function)"
        if self.tests is not None:
            if not isinstance(self.tests, list) or not self.tests:
                return "tests", "must be a non-empty list of strings"
            if not all(isinstance(t, str) for t in self.tests):
                return "tests", "every test must be a string"
            if self.entry_point is not None and (not isinstance(self.entry_point, str)
                                                 or not self.entry_point.isidentifier()):
                return "entry_point", "must be a Python identifier (the function under test)"
            return None
        if not isinstance(self.test, str):
            return "test", "must be a string"
        if not isinstance(self.entry_point, str) or not self.entry_point.isidentifier():
            return "entry_point", "a 'test' needs 'entry_point', the name of the function under test"
        return None

    def declared_total(self) -> int:
        return len(self.tests) if self.tests is not None else 1


# ---------------------------------------------------------------- verdicts from server reports

_STATUS_OF = {"error": "runtime_error", "timeout": "timeout", "memory": "memory",
              "compile_error": "compile_error", "unsupported": "sandbox_error", "fail": "failed"}


def verdict_from_report(job: Job, report: dict, limit: int = 4096) -> Verdict:
    """Decide the status from the tester's per-test outcomes. Only a completed run in which every
    planned test passed is `passed`; anything the harness did not see finish is never a pass."""
    outcomes = report.get("outcomes") or []
    total = report.get("total")
    total = job.declared_total() if total is None else total
    passed = outcomes.count("pass")
    errors = list(report.get("errors") or [])
    status = None
    if report.get("bad_test"):
        status, passed = "sandbox_error", 0
    elif report.get("load") not in (None, "ok"):
        status, passed = _STATUS_OF.get(report["load"], "runtime_error"), 0
    elif report.get("setup") and not passed:
        status = _STATUS_OF.get(report["setup"], "runtime_error")
    elif total == 0:
        status, errors = "sandbox_error", errors + ["the tests contain no check of the candidate"]
    elif passed == total == len(outcomes) and report.get("done") and not report.get("job_timeout"):
        status = "passed"
    elif passed:
        status = "partial"
    else:
        failures = set(outcomes) - {"pass"}
        for outcome in ("unsupported", "timeout", "memory", "error"):
            if outcome in failures:
                status = _STATUS_OF[outcome]
                break
        else:
            if report.get("job_timeout"):
                status = "timeout"
                errors.append("job exceeded job_timeout_s")
            elif not report.get("done") or report.get("load") is None:
                status = "runtime_error"
                errors.append("the tests stopped before they finished")
            else:
                status = "failed"
    if report.get("job_timeout") and status == "partial":
        errors.append("job exceeded job_timeout_s; tests not reached count as not passed")
    return Verdict(candidate_id=job.id, status=status, passed=min(passed, total), total=total,
                   duration_s=round(float(report.get("duration_s", 0.0)), 6),
                   stdout=proto.clean_text(str(report.get("stdout", "")), limit + 80),
                   error=proto.clean_text("\n".join(map(str, errors)), limit),
                   outcomes=[] if status == "sandbox_error" or report.get("load") not in (None, "ok")
                   else [str(o) for o in outcomes[:total]])


# ---------------------------------------------------------------- one sandboxed worker

# bwrap (0.8) mounts a tmpfs with `size=` only, and the kernel's default inode limit is about three
# million per mount: kernel memory a candidate could pin. So /tmp and /dev/shm are mounted before
# bwrap, with `nr_inodes=` too, in a user and mount namespace of their own (unprivileged, as bwrap's
# own), and bound into the sandbox; bwrap then starts as uid 0 of that namespace, so it is told the
# sandbox uid and to drop every capability. argv: SIZE INODES BWRAP ARGS...
_SCRATCH = "/dev/shm"       # an existing path of the host, covered only in that private namespace
_MOUNT_TMPFS = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        sys.exit(f"rank.sandbox: {what} failed: {os.strerror(err)}")
# a new anonymous session keyring: the sandbox does not even inherit the harness's (its filter also
# denies every keyring call); ENOSYS: a kernel without keyrings has nothing to inherit
keyctl = {"x86_64": 250, "aarch64": 219}.get(os.uname().machine)
if keyctl is not None and libc.syscall(keyctl, 1, None) < 0 and ctypes.get_errno() != 38:
    check(-1, "keyctl(KEYCTL_JOIN_SESSION_KEYRING)")
uid, gid = os.getuid(), os.getgid()
check(libc.unshare(0x10000000 | 0x00020000), "unshare(CLONE_NEWUSER | CLONE_NEWNS)")
for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
    fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
    os.write(fd, text.encode())
    os.close(fd)
check(libc.mount(None, b"/", None, 0x4000 | 0x40000, None), "making / private")
check(libc.mount(b"tmpfs", b"%(scratch)s", b"tmpfs", 6, b"size=65536,nr_inodes=8,mode=0755"), "scratch tmpfs")
options = f"size={sys.argv[1]},nr_inodes={sys.argv[2]},mode=1777".encode()
for name in ("t", "s"):
    os.mkdir(f"%(scratch)s/{name}")
    check(libc.mount(b"tmpfs", f"%(scratch)s/{name}".encode(), b"tmpfs", 6, options), "tmpfs")
os.execv(sys.argv[3], sys.argv[3:])
""" % {"scratch": _SCRATCH}

_FILTER: list[bytes] = []


def _filter() -> bytes:
    """The worker-wide syscall filter, assembled once per process."""
    if not _FILTER:
        try:
            _FILTER.append(seccomp.sandbox_filter())
        except seccomp.UnsupportedArch as e:
            raise SandboxUnavailable(f"{e}; pass SandboxConfig(seccomp=False) to run without a "
                                     "syscall filter") from None
    return _FILTER[0]


class _Worker:
    def __init__(self, config: SandboxConfig, interpreter: str):
        self.config, self.interpreter, self.proc = config, interpreter, None

    def _argv(self, fd_in: int, fd_out: int, fd_filter: int | None) -> list[str]:
        runner = RUNNERS[self.config.language]
        server = runner.server_argv(self.interpreter, fd_in, fd_out, not self.config.unsafe)
        if self.config.unsafe:
            return server
        c = self.config
        # --as-pid-1: the zygote is PID 1, which the kernel shields from every signal it has no
        # handler for (SIGKILL and SIGSTOP included) when sent from inside the namespace.
        argv = [c.bwrap] + (["--seccomp", str(fd_filter)] if fd_filter is not None else [])
        argv += ["--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                "--as-pid-1", "--new-session", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
                "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8", "--hostname", "sandbox",
                "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(top):
                argv += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                argv += ["--ro-bind", top, top]
        prefix = runner.prefix(self.interpreter)
        if not prefix.startswith(("/usr/", "/bin/", "/lib")) and prefix != "/usr":
            argv += ["--ro-bind", prefix, prefix]
        uid, gid = (c.uid, c.gid) if os.geteuid() == 0 else (os.getuid(), os.getgid())
        argv += ["--uid", str(uid), "--gid", str(gid), "--cap-drop", "ALL",
                 "--proc", "/proc", "--ro-bind", "/dev/null", "/proc/keys",      # as Docker masks it
                 "--ro-bind", "/dev/null", "/proc/key-users",
                 "--dev", "/dev", "--bind", f"{_SCRATCH}/s", "/dev/shm",
                 "--remount-ro", "/dev", "--bind", f"{_SCRATCH}/t", "/tmp", "--remount-ro", "/",
                 "--chdir", "/tmp", "--"]
        argv[0] = shutil.which(c.bwrap) or c.bwrap
        return [self.interpreter, "-I", "-S", "-c", _MOUNT_TMPFS, str(c.tmp_mb << 20), str(c.tmp_inodes),
                *argv, *server]

    def start(self) -> None:
        in_r, self.w = os.pipe()
        self.r, out_w = os.pipe()
        self.stderr = tempfile.TemporaryFile()
        kwargs = {}
        if os.geteuid() == 0:                       # never run the sandbox as root: it could read /root
            kwargs = {"user": self.config.uid, "group": self.config.gid, "extra_groups": []}
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        fds = [in_r, out_w]
        if self.config.seccomp and not self.config.unsafe:
            fds.append(os.memfd_create("rank-seccomp"))       # bwrap reads the program from it
            os.write(fds[-1], _filter())
            os.lseek(fds[-1], 0, os.SEEK_SET)
        try:
            self.proc = subprocess.Popen(self._argv(in_r, out_w, fds[2] if len(fds) > 2 else None),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=self.stderr, env=env, pass_fds=fds, start_new_session=True,
                                         cwd="/", **kwargs)
        finally:
            for fd in fds:
                os.close(fd)
        try:
            hello = proto.recv(self.r, time.monotonic() + 60)
        except (proto.Timeout, proto.Closed, ValueError) as e:
            self.stop()
            raise SandboxUnavailable(f"sandbox worker did not start ({type(e).__name__}): "
                                     f"{self.stderr_tail()}") from None
        if hello.get("k") != "hello":
            self.stop()
            raise SandboxUnavailable(f"sandbox worker sent {hello!r} instead of hello")

    def stderr_tail(self) -> str:
        try:
            self.stderr.seek(0)
            return self.stderr.read()[-2000:].decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        for fd in (self.w, self.r):                 # EOF: the server cleans up after its job and exits
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, 9)             # bwrap's --die-with-parent takes the namespace down
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.stderr.close()
        self.proc = None

    def run(self, job: Job) -> dict:
        """Run one job; returns the server's report, or {"k": "lost"/"broken"/"stalled", ...}."""
        if self.proc is None:
            self.start()
        c = self.config
        msg = {"id": job.id, "code": job.code, "tests": job.tests, "test": job.test,
               "entry_point": job.entry_point, "prompt": job.prompt, "output_limit": c.output_limit,
               "limits": {"memory_mb": c.memory_mb, "file_mb": c.file_mb, "open_files": c.open_files,
                          "procs": c.procs, "timeout_s": c.timeout_s, "job_timeout_s": c.job_timeout_s}}
        start = time.monotonic()
        data = proto.frame(msg)
        if len(data) > proto.MAX_MSG:
            return {"k": "too_large", "duration_s": 0.0}
        try:
            proto.write_all(self.w, data)
            # the server's own limits come first: job timer, zygote answer (5 s), clean-up (2 s)
            report = proto.recv(self.r, start + c.job_timeout_s + 10)
        except proto.Timeout:
            self.stop()
            return {"k": "stalled", "duration_s": time.monotonic() - start}
        except (proto.Closed, OSError, ValueError):
            tail = self.stderr_tail()
            self.stop()
            return {"k": "lost", "duration_s": time.monotonic() - start, "stderr": tail}
        if report.get("k") in ("broken", "internal"):
            self.stop()
        return report


# ---------------------------------------------------------------- the public API

class Sandbox:
    """A pool of sandbox workers, each driven by its own long-lived thread (bwrap's --die-with-parent
    follows the thread that started it). Use as a context manager; runs are serialised."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        c = self.config
        if not c.unsafe and shutil.which(c.bwrap) is None:
            raise SandboxUnavailable(
                f"bubblewrap ('{c.bwrap}') is not installed, so untrusted code cannot be isolated. "
                "Install it (Debian/Ubuntu: apt-get install bubblewrap) or, only for code you trust, "
                "pass SandboxConfig(unsafe=True).")
        self.interpreter = RUNNERS[c.language].interpreter(c.python, os.geteuid() == 0)
        self._lock = threading.Lock()
        self._inbox: queue.Queue = queue.Queue()
        started: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._serve, args=(_Worker(c, self.interpreter), started),
                                          daemon=True, name=f"rank-sandbox-{i}") for i in range(c.workers)]
        for t in self._threads:
            t.start()
        errors = [e for e in (started.get() for _ in self._threads) if e is not None]
        if errors:                                  # fail now, clearly, if the sandbox cannot start
            self.close()
            raise errors[0]

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for _ in self._threads:
            self._inbox.put(None)
        for t in self._threads:
            t.join()
        self._threads = []

    def _serve(self, worker: _Worker, started: queue.Queue) -> None:
        try:
            worker.start()
            started.put(None)
        except BaseException as e:
            started.put(e)
        try:
            while True:
                item = self._inbox.get()
                if item is None:
                    return
                i, job, done = item
                try:
                    done.put((i, self._run_one(worker, job)))
                except BaseException as e:          # surfaced in iter_run's thread
                    done.put(e)
        finally:
            worker.stop()

    def _warn_unsafe(self) -> None:
        message = ("rank.sandbox: running untrusted code WITHOUT bubblewrap (unsafe=True): it can read and "
                   "write your files and use the network; only rlimits and a process-group kill apply")
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        print(f"WARNING: {message}", file=sys.stderr, flush=True)

    def iter_run(self, jobs: list[Job]) -> Iterator[tuple[int, Verdict]]:
        """Yield (index, verdict) as jobs finish, in completion order."""
        for i, job in enumerate(jobs):
            problem = job.problem() if isinstance(job, Job) else ("job", "is not a rank.sandbox.Job")
            if not problem and job.language != self.config.language:
                problem = ("language", f"{job.language!r}, but this Sandbox runs {self.config.language!r}")
            if problem:
                raise ValueError(f"job {i} ({getattr(job, 'id', '?')!r}): field '{problem[0]}': {problem[1]}")
        if not self._threads:
            raise RuntimeError("this Sandbox is closed")
        if self.config.unsafe:
            self._warn_unsafe()
        with self._lock:
            done: queue.Queue = queue.Queue()
            for i, job in enumerate(jobs):
                self._inbox.put((i, job, done))
            try:
                for _ in range(len(jobs)):
                    item = done.get()
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:                                # abandoned early: drop this run's queued jobs
                self._drop_pending(done)

    def _drop_pending(self, done: queue.Queue) -> None:
        keep = []
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is None or item[2] is not done:
                keep.append(item)
        for item in keep:
            self._inbox.put(item)

    def run(self, jobs: list[Job], progress: Callable[[int], None] | None = None) -> list[Verdict]:
        """Verdicts in the order of `jobs` (Verdict.candidate_id == Job.id)."""
        out: list[Verdict | None] = [None] * len(jobs)
        for i, verdict in self.iter_run(jobs):
            out[i] = verdict
            if progress:
                progress(1)
        return out  # type: ignore[return-value]

    def _run_one(self, worker: _Worker, job: Job) -> Verdict:
        c = self.config
        for _attempt in range(3):
            try:
                report = worker.run(job)
            except SandboxUnavailable as e:
                return Verdict(job.id, "sandbox_error", 0, job.declared_total(), 0.0, "", str(e)[:c.output_limit])
            kind = report.get("k")
            if kind == "result":
                return verdict_from_report(job, report, c.output_limit)
            if kind == "broken":                    # a worker the previous job damaged: retry on a fresh one
                continue
            duration = round(report.get("duration_s", 0.0), 6)
            if kind == "internal":
                return Verdict(job.id, "sandbox_error", 0, job.declared_total(), duration, "",
                               f"harness error in the sandbox server: {report.get('e', '')}"[:c.output_limit])
            if kind == "too_large":
                return Verdict(job.id, "sandbox_error", 0, job.declared_total(), 0.0, "",
                               f"the job is larger than {proto.MAX_MSG} bytes")
            if kind == "stalled":
                return Verdict(job.id, "timeout", 0, job.declared_total(), duration, "",
                               "the sandbox worker stopped responding; it was killed")
            # The candidate filter keeps signals from the server and PID 1: this is the harness.
            return Verdict(job.id, "sandbox_error", 0, job.declared_total(), duration, "",
                           "the sandbox worker died during the run"
                           + (f"; its stderr: {report['stderr'][-500:]}" if report.get("stderr") else ""))
        return Verdict(job.id, "sandbox_error", 0, job.declared_total(), 0.0, "",
                       "the sandbox worker kept breaking")


def run_jobs(jobs: list[Job], config: SandboxConfig | None = None) -> list[Verdict]:
    """One-shot: start a Sandbox, run `jobs`, stop it. Plain data in and out (fine for Ray tasks)."""
    with Sandbox(config) as sb:
        return sb.run(jobs)
