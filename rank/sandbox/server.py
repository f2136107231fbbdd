"""The in-sandbox side of rank.sandbox: a warm fork-server. Standard library only.

Started by rank.sandbox as `python -I -c BOOT FD_IN FD_OUT MODE <sources>` inside bubblewrap: BOOT
(rank/sandbox/runners.py) installs this module and rank/sandbox/{wire,plan,tester}.py from their source text
and calls main(). Run it only through rank.sandbox (see docs/sandbox.md).

Processes in one sandbox worker (all the same unprivileged uid, in the worker's own PID namespace):
  zygote  PID 1 of the namespace (bwrap --as-pid-1), so the kernel delivers it no signal from inside
          (it has no handlers) and `kill(-1)` spares it. Forked from nothing but this code, it never
          sees a test: it forks one candidate process (C) per job, so a candidate's memory holds no
          test text and no expected value of any job. It reaps every orphan (SIGCHLD ignored).
  server  the zygote's first child: reads jobs from the host on FD_IN, answers on FD_OUT, and runs each
          job's test code (in a fresh namespace, under a job timer). Only it holds the host channel.
          C's syscall filter (rank/sandbox/seccomp.py) denies signals to it and to `-1`.
  C       runs the candidate program, then answers calls `name(*args)` with the result encoded as plain
          data (never pickle). It holds no channel to the host and none to other jobs.
All three are non-dumpable: no ptrace, no /proc/<pid>/mem or fd of each other.
In the server, every function the candidate supplies is a proxy that calls C; values come back decoded
into exact built-in types, so a forged __eq__, a patched builtin or assert, or an early exit in C cannot
make an assert pass: asserts run in the server, which C cannot touch. After each job the server sends
SIGKILL to every process but itself and PID 1 (`kill(-1)`), waits until they have exited, empties /tmp and
/dev/shm whatever their state, removes SysV IPC objects and checks its own limits before the next job.
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
from rank.sandbox.wire import Closed, Reader, _hook, _short, encode, recv, send

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

_PROTECT = [None]       # installs C's syscall filter (set in the zygote when the sandbox is isolated)

def candidate_main(code, lim, cwd):
    """fd 3: requests from the tester; fd 4: answers; fd 1/2: captured output. Never returns.
    Answers are lists: ["ready", [[name, "f"] | [name, "v", value]...]], ["ok", value],
    ["err", type, text], ["compile_error", text], ["error", type, text]."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setsid()
    os.chdir(cwd)
    apply_limits(lim)
    if _PROTECT[0] is not None:
        _PROTECT[0]()                   # the candidate's own syscall filter, before any of its code runs
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
    """What the server learns of the program: which names are functions and which are modules (by
    name). Never a value: the tests take nothing else from the candidate (rank/sandbox/plan.py)."""
    names = []
    for name, value in list(ns.items()):
        if name.startswith("__"):
            continue
        if isinstance(value, type(builtins)):
            names.append([name, "m", str(getattr(value, "__name__", ""))[:200]])
        elif callable(value):
            names.append([name, "f"])
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


def zygote_main(ctrl, server_pid=None):
    """Fork one C per request on `ctrl` (code + the C-side fds); answer with its pid. Exits when the
    server closes `ctrl`. `server_pid`: the process C's filter must not signal (isolated mode)."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)       # children (and, as PID 1, orphans) reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # PID 1 gets only signals it handles: handle none
    for name in WARM:                                   # what candidates commonly import, loaded once
        __import__(name)
    if server_pid is not None:
        from rank.sandbox.seccomp import UnsupportedArch, candidate_filter, installer
        try:
            _PROTECT[0] = installer(candidate_filter(server_pid))
        except UnsupportedArch:         # reached only with SandboxConfig(seccomp=False): the host
            pass                        # refuses this machine otherwise (rank.sandbox.host._filter)
    _warm_up()
    import gc
    gc.freeze()
    own = _own_state()
    while True:
        try:
            head, fds, _, _ = socket.recv_fds(ctrl, 4, 3)
        except OSError:
            os._exit(0)
        if not head:
            os._exit(0)
        head += _sock_exact(ctrl, 4 - len(head))
        msg = json.loads(_sock_exact(ctrl, struct.unpack(">I", head)[0]))
        if not _restore_state(own):                     # what every C would inherit: must be as it was
            os._exit(3)
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


def _own_state():
    """This process's rlimits, nice value, CPU affinity and scheduling policy."""
    import resource as r
    limits = {n: r.getrlimit(getattr(r, n)) for n in dir(r) if n.startswith("RLIMIT_")}
    return limits, os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0), os.sched_getscheduler(0)


def _restore_state(own):
    """Put back this process's limits, priority and affinity if anything changed them (the syscall
    filter already denies changing another process's); False if they cannot be put back."""
    import resource as r
    limits, nice, cpus, policy = own
    try:
        for name, value in limits.items():
            if r.getrlimit(getattr(r, name)) != value:
                r.setrlimit(getattr(r, name), value)
        if os.getpriority(os.PRIO_PROCESS, 0) != nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        if os.sched_getaffinity(0) != cpus:
            os.sched_setaffinity(0, cpus)
        return os.sched_getscheduler(0) == policy
    except (OSError, ValueError):
        return False


def _sock_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise Closed()
        buf += chunk
    return buf


# ---------------------------------------------------------------- the server

class _NoCandidate(Exception):
    """The worker cannot run this job and no candidate code has run for it: the host retries it on a
    fresh worker. Any other failure after C started is an internal error, never a second run."""


class Server:
    def __init__(self, fd_in, fd_out, isolated, zygote, ctrl):
        self.fd_in, self.fd_out, self.isolated, self.zygote, self.ctrl = fd_in, fd_out, isolated, zygote, ctrl
        if isolated:
            self.cwd = "/tmp"                       # a private tmpfs, emptied after every job
            self.roots = {d: os.stat(d) for d in ("/tmp", "/dev/shm")}
        else:
            import tempfile
            self.cwd = tempfile.mkdtemp(prefix="rank-unsafe-")
            self.roots = {self.cwd: os.stat(self.cwd)}
        import ctypes, fcntl, resource  # noqa: F401  (the rest of WARM is loaded by the zygote only)
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.ctrl.settimeout(5)                     # a zygote that stops answering is treated as dead
        self.broken = False
        self.own = _own_state()

    def serve(self):
        send(self.fd_out, {"k": "hello", "pid": os.getpid()})
        while True:
            try:
                job = recv(self.fd_in)
            except Closed:
                if not self.isolated:
                    _empty_dir(self.cwd, self.roots[self.cwd])
                    os.rmdir(self.cwd)
                return
            try:
                if self.broken or not _restore_state(self.own):
                    raise _NoCandidate()
                try:
                    self.spawn_candidate(job)
                except (OSError, Closed, struct.error) as e:    # socket.timeout is an OSError
                    raise _NoCandidate() from e
                report, c_pid = self.run(job)
            except _NoCandidate:                            # no candidate code ran: the host may retry
                send(self.fd_out, {"k": "broken", "e": "the zygote is gone; restart the worker"})
                return
            except Exception:               # a harness bug: never the candidate's fault, never re-run
                import traceback
                send(self.fd_out, {"k": "internal", "e": traceback.format_exc()[-2000:]})
                return
            send(self.fd_out, report)
            self.cleanup(c_pid)             # after the report, before the next job is read

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
        """Run the job's tests against the C spawn_candidate started -> (report, C's pid). Once: a job
        is never re-run, so a candidate cannot be asked the same thing twice."""
        lim, start = job["limits"], self.start
        deadline = start + lim["job_timeout_s"]
        link = Link(self.req_w, self.resp_r)
        report = {"k": "result", "id": job["id"], "outcomes": [], "errors": [], "total": None,
                  "load": None, "setup": None, "bad_test": None, "job_timeout": False, "done": False}
        _ARMED[0] = deadline
        signal.setitimer(signal.ITIMER_REAL, max(0.001, deadline - time.monotonic()), 0.05)
        try:
            run_tests(job, lim, link, report)
        except JobTimeout:
            report["job_timeout"] = True
        except PrefetchMismatch:                    # a planning bug: no verdict rather than a wrong one
            plan_tests(job).prefetch = None
            report.update(bad_test="error", done=False)
            report["errors"].append("harness error: the tests made a call their plan did not predict")
        finally:
            _ARMED[0] = None
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
        c_pid = self.candidate_pid()
        if c_pid is None and not link.heard:
            for fd in (self.req_w, self.resp_r, self.out):
                os.close(fd)
            raise _NoCandidate()                    # the zygote died before forking C: retry on a new worker
        if c_pid is not None:                       # before the report: the host may close us then
            try:
                (os.kill if self.isolated else os.killpg)(c_pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for fd in (self.req_w, self.resp_r):
            os.close(fd)
        report["stdout"] = self.read_output(self.out, job.get("output_limit", 4096))
        os.close(self.out)
        report["duration_s"] = time.monotonic() - start
        return report, c_pid

    def candidate_pid(self):
        """C's pid from the zygote; None (and the worker marked broken) if it could not say."""
        try:
            return struct.unpack(">q", _sock_exact(self.ctrl, 8))[0]
        except (OSError, Closed, struct.error):
            self.broken = True
            return None

    def cleanup(self, c_pid):
        """Leave nothing for the next job to meet: no process but the server and the zygote, empty
        writable file systems (whatever their modes and nesting), no SysV IPC object."""
        if not self.isolated:
            if c_pid is not None:
                try:
                    os.killpg(c_pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            _empty_dir(self.cwd, self.roots[self.cwd])
            return
        if not self._kill_all():
            self.broken = True              # something would not die: the next job gets a fresh worker
        for root, st in self.roots.items():
            if not _empty_dir(root, st):
                self.broken = True
        _remove_sysv_ipc()

    def _kill_all(self):
        """SIGKILL every process of the namespace but PID 1 (the zygote) and this one: `kill(-1)` leaves
        no gap for a scan to miss. Then wait, up to 2 s, until each process /proc still lists has
        exited as a whole thread group (its pidfd is readable: files, memory and IPC attachments are
        released by then; a zombie leader with live threads is not readable), waiting on the pidfds
        rather than polling. False if some remain."""
        import select
        me, give_up = os.getpid(), time.monotonic() + 2.0
        while True:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:      # nothing to signal
                pass
            alive = []
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) in (1, me):
                    continue
                try:
                    fd = os.pidfd_open(int(entry))
                except OSError:             # gone meanwhile
                    continue
                if select.select([fd], [], [], 0)[0]:
                    os.close(fd)            # exited; only its entry is left until it is reaped
                else:
                    alive.append(fd)
            if not alive:
                return True
            try:
                left = give_up - time.monotonic()
                if left <= 0:
                    return False
                select.select(alive, [], [], min(left, 0.05))
            finally:
                for fd in alive:
                    os.close(fd)

    @staticmethod
    def read_output(fd, limit):
        size = os.lseek(fd, 0, os.SEEK_END)
        data = os.pread(fd, limit * 4, 0) if size else b""
        text = data.decode("utf-8", "replace")[:limit]
        return text + (f"\n...[truncated, {size} bytes in all]" if size > len(text) else "")


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


def _empty_dir(root, st):
    """Delete everything under `root` and give `root` back its mode and times (from `st`) without its
    extended attributes, whatever a candidate did: modes that forbid reading or writing, directories
    nested deeper than PATH_MAX, odd names, hard links. Works on directory fds, one level at a time:
    a non-empty subdirectory's subdirectories are moved up to `root` and taken later, so no path grows
    and at most two fds are open. Call only when no other process is left. False if anything remains."""
    import stat as S
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.chmod(fd, S.S_IMODE(st.st_mode) | S.S_IRWXU)
        moved = 0
        for _ in range(1 << 20):                # each pass removes or flattens; the inode limit bounds it
            names = os.listdir(fd)
            if not names:
                break
            for name in names:
                moved = _remove_entry(fd, name, moved)
        os.chmod(fd, S.S_IMODE(st.st_mode))
        for attr in os.listxattr(fd):
            os.removexattr(fd, attr)
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        return not os.listdir(fd)
    except OSError:
        return False
    finally:
        os.close(fd)


def _remove_entry(root_fd, name, moved):
    """Remove `name` from the directory `root_fd`: unlink it, or rmdir it once its own subdirectories
    are moved up to `root_fd` (under fresh names) and its files unlinked. Returns the moved count."""
    import stat as S
    try:
        if not S.S_ISDIR(os.stat(name, dir_fd=root_fd, follow_symlinks=False).st_mode):
            os.unlink(name, dir_fd=root_fd)
            return moved
        os.chmod(name, 0o700, dir_fd=root_fd)
        sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
    except OSError:
        return moved
    try:
        for child in os.listdir(sub):
            try:
                if S.S_ISDIR(os.stat(child, dir_fd=sub, follow_symlinks=False).st_mode):
                    os.chmod(child, 0o700, dir_fd=sub)      # moving a directory rewrites its '..'
                    while True:
                        moved += 1
                        try:
                            os.rename(child, f".rank-{moved}", src_dir_fd=sub, dst_dir_fd=root_fd)
                            break
                        except FileExistsError:
                            continue
                        except OSError as e:
                            if e.errno not in (20, 39):     # ENOTDIR, ENOTEMPTY: that name is taken
                                raise
                else:
                    os.unlink(child, dir_fd=sub)
            except OSError:
                pass
    finally:
        os.close(sub)
    try:
        os.rmdir(name, dir_fd=root_fd)
    except OSError:
        pass
    return moved


def main(argv):
    """argv: FD_IN FD_OUT MODE ("isolated" inside bubblewrap, as PID 1; "unsafe" without)."""
    fd_in, fd_out, isolated = int(argv[0]), int(argv[1]), argv[2] == "isolated"
    set_dumpable(not isolated)
    ctrl, zctrl = socket.socketpair()
    if isolated:                        # PID 1 becomes the zygote; the server is its first child
        server = os.fork()
        if server == 0:
            zctrl.close()
            Server(fd_in, fd_out, True, 1, ctrl).serve()
            os._exit(0)
        ctrl.close()
        os.close(fd_in), os.close(fd_out)
        keep_fds({zctrl.fileno(): zctrl.fileno()})
        zygote_main(zctrl, server_pid=server)
    zygote = os.fork()
    if zygote == 0:
        ctrl.close()
        keep_fds({zctrl.fileno(): zctrl.fileno()})
        zygote_main(zctrl)
    zctrl.close()
    Server(fd_in, fd_out, False, zygote, ctrl).serve()
