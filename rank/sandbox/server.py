"""The in-sandbox side of rank.sandbox: a warm fork-server. Standard library only.

Started by rank.sandbox as `python -I -c BOOT FD_IN FD_OUT MODE <sources>` inside bubblewrap: BOOT
(rank/sandbox/runners.py) installs this module and rank/sandbox/{wire,plan,tester}.py from their source text
and calls main(). Run it only through rank.sandbox (see docs/sandbox.md).

Processes in one sandbox worker (all the same unprivileged uid, in the worker's own PID namespace):
  server  reads jobs from the host on FD_IN, answers on FD_OUT, and runs each job's test code (in a fresh
          namespace, under a job timer). It is non-dumpable, so a candidate can neither ptrace it nor
          open its /proc/<pid>/fd or mem. It is the namespace's PID 1 (bwrap --as-pid-1), so no signal it
          has no handler for reaches it from inside. Only it holds the host channel (fds >= 3).
  zygote  forked at start-up, before any job, and never shown a test: it forks one candidate process (C)
          per job, so a candidate's memory holds no test text and no expected value of any job.
  C       runs the candidate program, then answers calls `name(*args)` with the result encoded as plain
          data (never pickle). It holds no channel to the host and none to other jobs.
In the server, every program function is a proxy that calls C; values come back decoded into exact
built-in types, so a forged __eq__, a patched builtin or assert, or an early exit in C cannot make an
assert pass: asserts run in the server, which C cannot touch. When every call the tests will make is
known from their source (literal arguments), the server sends them all at once and C answers back to
back (Link.prefetch); if the tests then deviate from that sequence the job is rerun on a fresh C without
it, so C always sees exactly the calls the tests make, in order. After each job the server kills every
other process in the PID namespace, empties /tmp and /dev/shm and removes SysV IPC objects.
"""
import builtins
import json
import os
import signal
import socket
import struct
import sys
import time

from rank.sandbox.plan import plan_tests
from rank.sandbox.tester import _ARMED, JobTimeout, Link, PrefetchMismatch, _on_alarm, run_tests
from rank.sandbox.wire import Closed, Reader, Unsupported, _hook, _short, encode, recv, send

# Loaded once in the zygote, so candidates importing them pay nothing. Kept small: every mapped library
# makes each per-job fork and exit slower (hashlib/decimal/ctypes cost more than they save).
WARM = ("math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string", "typing",
        "copy", "operator", "resource")


# ---------------------------------------------------------------- process helpers

_LIBC = []


def set_dumpable(flag):
    import ctypes
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    if _LIBC[0].prctl(4, int(flag), 0, 0, 0) != 0:   # PR_SET_DUMPABLE
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")


def keep_fds(mapping):
    """dup each fd in `mapping` (old -> new), close every other fd above 2 (or 0..2 if mapped)."""
    import fcntl
    tmp = {old: fcntl.fcntl(old, fcntl.F_DUPFD, 200) for old in mapping}   # above every target
    for old, new in mapping.items():
        os.dup2(tmp[old], new)
    keep = sorted(set(mapping.values()))
    lo = 3
    for k in keep + [1 << 16]:
        if k >= lo:
            os.closerange(lo, k)
            lo = k + 1


def apply_limits(lim):
    import resource as r
    mb = 1 << 20
    for name, value in (("RLIMIT_AS", lim["memory_mb"] * mb), ("RLIMIT_FSIZE", lim["file_mb"] * mb),
                        ("RLIMIT_NOFILE", lim["open_files"]), ("RLIMIT_NPROC", lim["procs"]),
                        ("RLIMIT_CORE", 0)):
        r.setrlimit(getattr(r, name), (value, value))
    cpu = int(lim["job_timeout_s"]) + 1
    r.setrlimit(r.RLIMIT_CPU, (cpu, cpu + 1))


# ---------------------------------------------------------------- C and the zygote

def candidate_main(code, lim, cwd):
    """fd 3: requests from the tester; fd 4: answers; fd 1/2: captured output. Never returns.
    Answers are lists: ["ready", [[name, "f"] | [name, "v", value]...]], ["ok", value],
    ["err", type, text], ["compile_error", text], ["error", type, text]."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setsid()
    os.chdir(cwd)
    apply_limits(lim)
    ns = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        obj = compile(code, "<candidate>", "exec")
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError) as e:
        send(4, ["compile_error", f"{type(e).__name__}: {_short(e)}"])
        os._exit(0)
    try:
        exec(obj, ns)
        names = _program_names(ns)
        _flush()
        send(4, ["ready", names])
    except BaseException as e:
        _flush()
        send(4, ["compile_error" if isinstance(e, SyntaxError) else "error", type(e).__name__, _short(e)])
        os._exit(0)
    requests = Reader(3)
    while True:
        _, name, args, kwargs = requests.recv(hook=_hook)
        try:
            answer = ["ok", encode(ns[name](*args, **kwargs))]
        except BaseException as e:
            answer = ["err", type(e).__name__, _short(e)]
        _flush()
        send(4, answer)


def _program_names(ns):
    """What the server learns of the program: modules by name, callables as proxies, small constants."""
    names = []
    for name, value in list(ns.items()):
        if name.startswith("__"):
            continue
        if isinstance(value, type(builtins)):
            names.append([name, "m", str(getattr(value, "__name__", ""))])
        elif callable(value):
            names.append([name, "f"])
        elif not isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)) or len(value) <= 10000:
            try:                    # small constants only: a big table would only slow every job
                names.append([name, "v", encode(value)])
            except (Unsupported, RecursionError, ValueError, TypeError):
                pass
    return names


# A fixed dummy program (never a job's code or tests) that the zygote runs through C's own code paths.
_WARM_PROGRAM = """from typing import List, Tuple
import math
LIMIT = 10
PAIRS = [(1, 'a'), (2, 'b')]
def f(xs: List[int], scale: float = 1.0) -> Tuple[int, float]:
    total = sum(x * x for x in xs if x % 2 == 0)
    return total, math.sqrt(total) * scale
class Helper:
    pass
"""


def _warm_up():
    """Run C's per-job code paths (compile, exec, the name scan, the codec, framing, reading a request)
    on the dummy program a dozen times in the zygote, before gc.freeze(): CPython specialises bytecode
    and fills caches on first runs, and each C would otherwise redo that in copy-on-write pages of its
    own. No job's data is involved."""
    try:
        r, w = os.pipe()
    except OSError:
        return
    try:
        reader = Reader(r)
        for _ in range(12):
            ns = {"__name__": "__candidate__", "__builtins__": builtins}
            exec(compile(_WARM_PROGRAM, "<candidate>", "exec"), ns)
            _program_names(ns)
            send(w, ["call", "f", encode([[1, 2, 3, 4]]), encode({"scale": 2.0})])
            _, name, args, kwargs = reader.recv(hook=_hook)
            send(w, ["ok", encode(ns[name](*args, **kwargs))])
            send(w, ["err", "ValueError", _short(ValueError("x"))])
            reader.recv(hook=_hook), reader.recv(hook=_hook)
            _flush()
    except Exception:                   # only an optimisation: C works the same without it
        pass
    finally:
        os.close(r), os.close(w)


def _flush():
    """Push buffered candidate output into the captured memfd before the server reads it."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def zygote_main(ctrl):
    """Fork one C per request on `ctrl` (code + the C-side fds); answer with its pid."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)       # children are reaped by the kernel
    for name in WARM:                                   # what candidates commonly import, loaded once
        __import__(name)
    _warm_up()
    import gc
    gc.freeze()
    while True:
        try:
            head, fds, _, _ = socket.recv_fds(ctrl, 4, 3)
        except OSError:
            os._exit(0)
        if not head:
            os._exit(0)
        head += _sock_exact(ctrl, 4 - len(head))
        msg = json.loads(_sock_exact(ctrl, struct.unpack(">I", head)[0]))
        pid = os.fork()
        if pid == 0:
            try:
                devnull = os.open("/dev/null", os.O_RDONLY)
                keep_fds({devnull: 0, fds[2]: 1, fds[0]: 3, fds[1]: 4})
                os.dup2(1, 2)
                candidate_main(msg["code"], msg["limits"], msg["cwd"])
            finally:
                os._exit(1)
        for fd in fds:
            os.close(fd)
        ctrl.sendall(struct.pack(">q", pid))


def _sock_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise Closed()
        buf += chunk
    return buf


# ---------------------------------------------------------------- the server

class Server:
    def __init__(self, fd_in, fd_out, isolated):
        self.fd_in, self.fd_out, self.isolated = fd_in, fd_out, isolated
        if isolated:
            self.cwd = "/tmp"                       # a private tmpfs, emptied after every job
        else:
            import tempfile
            self.cwd = tempfile.mkdtemp(prefix="rank-unsafe-")
        import ctypes, fcntl, resource  # noqa: F401  (the rest of WARM is loaded by the zygote only)
        set_dumpable(not isolated)
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.signal(signal.SIGINT, signal.SIG_IGN)    # as PID 1, handled signals are all C could send
        self.ctrl, zctrl = socket.socketpair()
        self.ctrl.settimeout(5)                     # a zygote that stops answering is treated as dead
        self.broken = False
        self.zygote = os.fork()
        if self.zygote == 0:
            self.ctrl.close()
            keep_fds({zctrl.fileno(): zctrl.fileno()})
            zygote_main(zctrl)
        zctrl.close()

    def serve(self):
        send(self.fd_out, {"k": "hello", "pid": os.getpid()})
        while True:
            try:
                job = recv(self.fd_in)
            except Closed:
                if not self.isolated:
                    _empty_dir(self.cwd)
                    os.rmdir(self.cwd)
                return
            try:
                if self.broken or self.zygote_gone():
                    raise Closed()
                self.spawn_candidate(job)
                report, c_pid = self.run(job)
            except (OSError, Closed, struct.error):         # socket.timeout is an OSError
                send(self.fd_out, {"k": "broken", "e": "the zygote is gone; restart the worker"})
                return
            except Exception:                               # a harness bug: never the candidate's fault
                import traceback
                send(self.fd_out, {"k": "internal", "e": traceback.format_exc()[-2000:]})
                return
            send(self.fd_out, report)
            self.cleanup(c_pid)             # after the report, before the next job is read

    def zygote_gone(self):
        try:
            return os.waitpid(self.zygote, os.WNOHANG)[0] != 0
        except ChildProcessError:                   # already reaped by _reap
            return True

    def spawn_candidate(self, job):
        """Have the zygote fork C; keep the tester's ends of the pipes and the output memfd."""
        self.start = time.monotonic()
        req_r, self.req_w = os.pipe()
        self.resp_r, resp_w = os.pipe()
        self.out = os.memfd_create("out")
        payload = json.dumps({"code": job["code"], "limits": job["limits"], "cwd": self.cwd}).encode()
        try:
            socket.send_fds(self.ctrl, [struct.pack(">I", len(payload))], [req_r, resp_w, self.out])
            self.ctrl.sendall(payload)
        finally:
            os.close(req_r), os.close(resp_w)
        # C's pid is read after the tests: the zygote's fork overlaps with planning the tests.

    def run(self, job):
        """Run the job's tests against the C spawn_candidate started -> (report, C's pid)."""
        lim, start, prefetch = job["limits"], self.start, True
        deadline = start + lim["job_timeout_s"]
        while True:
            link = Link(self.req_w, self.resp_r)
            report = {"k": "result", "id": job["id"], "outcomes": [], "errors": [], "total": None,
                      "load": None, "setup": None, "bad_test": None, "job_timeout": False, "done": False}
            _ARMED[0] = deadline
            signal.setitimer(signal.ITIMER_REAL, max(0.001, deadline - time.monotonic()), 0.05)
            try:
                run_tests(job, lim, link, report, prefetch)
                retry = False
            except JobTimeout:
                report["job_timeout"], retry = True, False
            except PrefetchMismatch:
                retry = True
            finally:
                _ARMED[0] = None
                signal.setitimer(signal.ITIMER_REAL, 0, 0)
            c_pid = self.candidate_pid()
            if c_pid is None and self.broken and not link.heard:
                for fd in (self.req_w, self.resp_r, self.out):
                    os.close(fd)
                raise Closed()              # the zygote died before forking C: retry on a new worker
            if c_pid is not None:                   # before the report: the host may close us then
                try:
                    (os.kill if self.isolated else os.killpg)(c_pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            for fd in (self.req_w, self.resp_r):
                os.close(fd)
            if retry and self.broken:               # no fresh C to rerun on: blame this candidate
                report.update(outcomes=[], load="error", done=False)
                report["errors"] = ["the candidate stopped or killed the sandbox's zygote"]
            if not retry or self.broken:
                break
            plan_tests(job).prefetch = prefetch = None      # this plan's calls are not predictable
            os.close(self.out)
            self.cleanup(c_pid)
            self.spawn_candidate(job)
        report["stdout"] = self.read_output(self.out, job.get("output_limit", 4096))
        os.close(self.out)
        report["duration_s"] = time.monotonic() - start
        return report, c_pid

    def candidate_pid(self):
        """C's pid from the zygote; None (and the worker marked broken) if the zygote was stopped or
        killed before it could say: the job still gets its verdict, the next job a fresh worker."""
        import select
        if not select.select([self.ctrl], [], [], 0)[0]:    # not sent yet (the zygote may be stopped):
            if self.isolated:
                self._kill_namespace(wait=False)            # C cannot stop it again once it is
            try:
                os.kill(self.zygote, signal.SIGCONT)        # resumed
            except ProcessLookupError:
                pass
        try:
            return struct.unpack(">q", _sock_exact(self.ctrl, 8))[0]
        except (OSError, Closed, struct.error):
            self.broken = True
            return None

    def cleanup(self, c_pid):
        """Kill C and everything it started; leave nothing for the next job to meet."""
        if c_pid is not None:
            try:
                os.kill(c_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.isolated:
            if c_pid is not None:
                _wait_exit(c_pid, 1.0)      # then the scan below usually finds nothing in one pass
            self._kill_namespace()
            try:
                os.kill(self.zygote, signal.SIGCONT)    # in case C stopped it
            except ProcessLookupError:
                pass
            for d in ("/tmp", "/dev/shm"):
                _empty_dir(d)
            _remove_sysv_ipc()
        else:
            if c_pid is not None:
                try:
                    os.killpg(c_pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            _empty_dir(self.cwd)

    def _kill_namespace(self, wait=True):
        """SIGKILL every process but PID 1 and the zygote, pass after pass, until a pass finds none it
        has not already killed (a process with SIGKILL pending runs no more user code and cannot fork:
        the kernel aborts a fork whose parent has a fatal signal pending). Then wait, up to 2 s, for
        the dying to be gone, so the next job does not even see them in /proc."""
        keep, killed = {1, os.getpid(), self.zygote}, set()
        give_up = time.monotonic() + 2.0
        for _ in range(100000):
            found = 0
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) in keep or int(entry) in killed:
                    continue
                try:
                    with open(f"/proc/{entry}/stat", "rb") as fh:
                        state = fh.read().rsplit(b")", 1)[1].split()[0]
                except (OSError, IndexError):
                    continue
                if state in (b"Z", b"X"):
                    continue
                found += 1
                killed.add(int(entry))
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._reap()
            if not found:
                if not wait or not killed or time.monotonic() > give_up:
                    return
                killed = {pid for pid in killed if _alive(pid)}
                if not killed:
                    return
                time.sleep(0.0002)

    def _reap(self):
        """As PID 1 the server inherits every orphan: collect the dead (leaving a dead zygote's status
        for zygote_gone)."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == self.zygote:
                return
            os.waitpid(info.si_pid, 0)

    @staticmethod
    def read_output(fd, limit):
        size = os.lseek(fd, 0, os.SEEK_END)
        data = os.pread(fd, limit * 4, 0) if size else b""
        text = data.decode("utf-8", "replace")[:limit]
        return text + (f"\n...[truncated, {size} bytes in all]" if size > len(text) else "")


def _alive(pid):
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def _wait_exit(pid, timeout):
    """Wait (without polling) until `pid` has exited, at most `timeout` s. Only a shortcut for the
    namespace scan that follows, which alone decides what is left; without pidfd_open it does nothing."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):       # gone already, or no pidfd_open (Linux < 5.3, Python < 3.9)
        return
    try:
        import select
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)


def _read_small(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def _remove_sysv_ipc():
    """SysV shared memory, semaphores and queues outlive their creator (and RLIMIT_AS once detached):
    remove every one in this IPC namespace."""
    for kind, rm in (("shm", "shmctl"), ("sem", "semctl"), ("msg", "msgctl")):
        try:
            lines = _read_small(f"/proc/sysvipc/{kind}").splitlines()
            ids = [int(line.split()[1]) for line in lines[1:] if line.strip()]
        except (OSError, ValueError, IndexError):
            continue
        for ipc_id in ids:
            if kind == "sem":
                _LIBC[0].semctl(ipc_id, 0, 0)               # IPC_RMID
            else:
                getattr(_LIBC[0], rm)(ipc_id, 0, None)


def _empty_dir(root):
    """Delete everything under `root` (iteratively: a candidate may nest directories very deep)."""
    stack, dirs = [root], []
    while stack:
        path = stack.pop()
        try:
            if path != root:
                os.chmod(path, 0o700)
            names = os.listdir(path)
        except OSError:
            continue
        for name in names:
            full = os.path.join(path, name)
            try:
                if os.path.isdir(full) and not os.path.islink(full):
                    stack.append(full)
                    dirs.append(full)
                else:
                    os.unlink(full)
            except OSError:
                pass
    for path in reversed(dirs):
        try:
            os.rmdir(path)
        except OSError:
            pass


def main(argv):
    """argv: FD_IN FD_OUT MODE ("isolated" inside bubblewrap, "unsafe" without)."""
    Server(int(argv[0]), int(argv[1]), argv[2] == "isolated").serve()
