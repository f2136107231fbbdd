"""Running a job's tests in the sandbox server against the candidate process C.

Every program function is a Proxy: a call sends `["call", name, args, kwargs]` to C and decodes the
answer into exact built-ins, so the asserts run here, on plain data, out of the candidate's reach.
"""
import builtins
import sys
import time

from rank.sandbox.plan import plan_tests
from rank.sandbox.wire import (Closed, Reader, Timeout, Unsupported, _hook, _short, encode, frame,
                                strict_eq, write_all)

_BUILTIN_NAMES = frozenset(dir(builtins))


class CandidateError(Exception):
    """C answered a call with an exception (or died, or hung)."""

    def __init__(self, outcome, message):
        super().__init__(message)
        self.outcome = outcome


class Link:
    """The tester's end of the C channel; `deadline` is set per test."""

    def __init__(self, req_w, resp_r):
        self.req_w, self.resp_r, self.deadline, self.dead = req_w, resp_r, None, None
        self.reader = Reader(resp_r)
        self.pending, self.mismatch = None, False
        self.heard = False                  # any message from C: proof that C existed

    def prefetch(self, plan):
        """Send the plan's calls now: C answers them back to back and the tests consume the answers in
        order. Exact only if the tests then make exactly these calls in this order; any deviation raises
        PrefetchMismatch and the server reruns the job on a fresh C without prefetching."""
        import collections
        try:
            write_all(self.req_w, b"".join(plan.prefetch))
        except OSError:                 # C already gone (e.g. a compile error); its last words are read later
            return
        self.pending = collections.deque(plan.prefetch)

    def read(self):
        """Next message from C, decoded into exact built-ins (a list), or CandidateError."""
        if self.dead:
            raise CandidateError(*self.dead)
        try:
            msg = self.reader.recv(self.deadline, hook=_hook)
            self.heard = True
            if type(msg) is list and msg and type(msg[0]) is str:
                return msg
            self.dead = ("error", "unreadable answer from the candidate")
        except Timeout:
            self.dead = ("timeout", "time limit exceeded")
        except Closed:
            self.dead = ("error", "the candidate process exited")
        except (ValueError, TypeError, RecursionError, MemoryError) as e:
            self.dead = ("error", f"unreadable answer from the candidate: {type(e).__name__}")
        raise CandidateError(*self.dead)

    def call(self, name, args, kwargs):
        if self.dead:
            raise CandidateError(*self.dead)
        try:
            data = frame(["call", name, encode(list(args)), encode(kwargs)])
        except Unsupported as e:
            raise CandidateError("unsupported", f"test passes a value that is not plain data: {e}")
        if self.pending is not None:
            if self.mismatch or not self.pending or self.pending[0] != data:
                self.mismatch = True
                raise PrefetchMismatch()
            self.pending.popleft()
        else:
            try:
                write_all(self.req_w, data)
            except OSError:
                self.dead = ("error", "the candidate process exited")
                raise CandidateError(*self.dead)
        answer = self.read()
        if answer[0] == "ok" and len(answer) == 2:
            return answer[1]
        if answer[0] == "err" and len(answer) == 3:
            kind, message = str(answer[1]), str(answer[2])
            raise CandidateError("memory" if kind == "MemoryError" else "error", f"{kind}: {message}")
        self.dead = ("error", "unreadable answer from the candidate")
        raise CandidateError(*self.dead)


class PrefetchMismatch(BaseException):
    """The tests did not make the prefetched calls in order (see Link.prefetch)."""


class Proxy:
    def __init__(self, link, name):
        self._link, self.__name__ = link, name

    def __call__(self, *args, **kwargs):
        return self._link.call(self.__name__, args, kwargs)

    def __repr__(self):
        return f"<candidate function {self.__name__}>"


# Modules the program imported are re-imported here by name (never the candidate's object), so tests that
# lean on the program's `import math` work; only standard modules without side effects on import.
_NO_IMPORT = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "webbrowser", "pydoc",
              "ensurepip", "venv", "lib2to3", "__main__"}


def exported_names(job, plan, program, link):
    """Program names as the test code sees them: functions as proxies to C, small constants as plain
    values, modules re-imported. A program name that shadows a builtin (`def abs(x): return 0` would make
    `assert abs(f(x) - y) < eps` pass) is exported only if it is the function under test: the
    entry point, or else the one program function that every snippet calls."""
    import importlib
    shadowing = _BUILTIN_NAMES & program.keys()
    allowed = {job["entry_point"]} if job.get("entry_point") else set()
    if not allowed:
        called = {n for n in plan.called_everywhere if n in program and program[n][1] == "f"}
        allowed = called if len(called) == 1 else set()
    out = {}
    for name, item in program.items():
        if name in shadowing and name not in allowed:
            continue
        if item[1] == "f":
            out[name] = Proxy(link, name)
        elif item[1] == "m":
            module = str(item[2]) if len(item) == 3 else ""
            if module.split(".")[0] in sys.stdlib_module_names and module.split(".")[0] not in _NO_IMPORT:
                try:
                    out[name] = importlib.import_module(module)
                except Exception:
                    pass
        elif item[1] == "v" and len(item) == 3:
            out[name] = item[2]
    return out


class JobTimeout(BaseException):
    """Raised by SIGALRM in the server when a job's whole budget is spent (BaseException: test code's
    `except Exception` does not swallow it; the timer re-fires in case a bare `except:` does)."""


_ARMED = [None]                 # the job's deadline while its tests run


def _on_alarm(signum, frame):
    if _ARMED[0] is not None and time.monotonic() >= _ARMED[0]:    # C can send SIGALRM too: check
        raise JobTimeout()


def run_tests(job, lim, link, report, prefetch=True):
    """Run the job's tests in this (the server's) process against C through `link`, filling `report`.
    Test code is trusted to be honest but not to be well behaved: it runs in a fresh namespace, under a
    job timer, and only ever sees plain data from the candidate."""
    timeout = lim["timeout_s"]
    try:
        plan = plan_tests(job)
        setup, tests = plan.setup, plan.tests
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        report["bad_test"] = "error"
        report["errors"].append(f"the test source is unusable: {type(e).__name__}: {_short(e)}")
        return
    report["total"] = sum(1 for label, _ in tests if label is not None)
    if plan.prefetch and prefetch:
        link.prefetch(plan)                             # queued while C is still loading the program
    link.deadline = time.monotonic() + timeout
    try:
        ready = link.read()
    except CandidateError as e:
        report["load"] = e.outcome
        report["errors"].append(f"program: {e}")
        return
    if ready[0] != "ready" or len(ready) != 2 or type(ready[1]) is not list:
        outcome = "compile_error" if ready[0] == "compile_error" else "error"
        if len(ready) > 1 and ready[1] == "MemoryError":
            outcome = "memory"
        report["load"] = outcome
        report["errors"].append(": ".join(str(x) for x in ready[1:])[:1000])
        return
    report["load"] = "ok"
    ns = {"__name__": "__main__", "__builtins__": dict(builtins.__dict__), "__rank_eq__": strict_eq}
    program = {item[0]: item for item in ready[1]
               if type(item) is list and len(item) in (2, 3) and type(item[0]) is str and not
               item[0].startswith("__")}
    exported = exported_names(job, plan, program, link)
    ns.update(exported)
    if plan.free is not None:       # a snippet that uses only builtins checks nothing of the program
        tests = [(label if label and (free - _BUILTIN_NAMES or free & exported.keys()) else None, code)
                 for (label, code), free in zip(tests, plan.free)]
        report["total"] = sum(1 for label, _ in tests if label is not None)
    try:
        link.deadline = time.monotonic() + timeout
        for code in setup:
            exec(code, ns)
    except (JobTimeout, PrefetchMismatch):
        raise
    except BaseException as e:
        report["setup"] = e.outcome if isinstance(e, CandidateError) else "error"
        report["errors"].append(f"test setup failed: {type(e).__name__}: {_short(e)}")
        return
    for label, code in tests:
        link.deadline = time.monotonic() + timeout
        try:
            exec(code, ns)
            outcome, message = "pass", ""
        except (JobTimeout, PrefetchMismatch):
            raise
        except CandidateError as e:
            outcome, message = e.outcome, str(e)
        except AssertionError as e:
            outcome, message = "fail", f"AssertionError: {_short(e)}"
        except BaseException as e:
            outcome, message = "error", f"{type(e).__name__}: {_short(e)}"
        if label is None:                              # a setup step between asserts
            if outcome != "pass":
                report["setup"] = outcome
                report["errors"].append(f"test setup failed: {message}")
                return
            continue
        report["outcomes"].append(outcome)
        if message and len(report["errors"]) < 3:
            report["errors"].append(f"{label}: {message}")
        if outcome == "timeout":
            return                                      # C is stuck; the rest count as not passed
    if link.mismatch or link.pending:
        raise PrefetchMismatch()
    report["done"] = True
