"""Running a job's tests in the sandbox server against the candidate process C.

Every program function is a Proxy: a call sends `["call", name, args, kwargs]` to C and decodes the
answer into exact built-ins, so the asserts run here, on plain data, out of the candidate's reach.
"""
import builtins
import time

from rank.sandbox.plan import plan_tests
from rank.sandbox.wire import (Closed, Reader, Timeout, Unsupported, _hook, _short, clean_text, encode,
                               frame, write_all)


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
        self.pending, self.step = None, 0
        self.heard = False                  # any message from C: proof that C existed

    def prefetch(self, plan):
        """Send the plan's calls now: C answers them back to back and the tests consume the answers in
        order. The plan holds only calls that every completed step makes, unconditionally and in this
        order; a step cut short by an exception leaves its remaining answers, which `end_step` reads
        and drops. Nothing is ever re-run."""
        import collections
        try:
            write_all(self.req_w, b"".join(c for _, c in plan.prefetch))
        except OSError:                 # C already gone (e.g. a compile error); its last words are read later
            return
        self.pending = collections.deque(plan.prefetch)

    def end_step(self, cut_short):
        """Move on to the next step. A step cut short by an exception may leave answers to its
        prefetched calls: read and drop them, so the next step reads its own answers. A step that
        completed has made all of them (else the plan was wrong: PrefetchMismatch)."""
        if not cut_short and self.pending and self.pending[0][0] == self.step:
            raise PrefetchMismatch()
        while self.pending and self.pending[0][0] == self.step and not self.dead:
            self.pending.popleft()
            try:
                self.read()
            except CandidateError:
                break
        self.step += 1

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
        except (ValueError, TypeError, RecursionError, MemoryError, OverflowError) as e:
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
            if not self.pending or self.pending[0] != (self.step, data):
                raise PrefetchMismatch()            # a planning bug, never the candidate's doing
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
            kind, message = clean_text(answer[1], 100), clean_text(answer[2], 500)
            raise CandidateError("memory" if kind == "MemoryError" else "error", f"{kind}: {message}")
        self.dead = ("error", "unreadable answer from the candidate")
        raise CandidateError(*self.dead)


class PrefetchMismatch(BaseException):
    """The tests made a call the plan did not predict (see Link.prefetch): a harness bug."""


class Proxy:
    def __init__(self, link, name):
        self._link, self.__name__ = link, name

    def __call__(self, *args, **kwargs):
        return self._link.call(self.__name__, args, kwargs)

    def __repr__(self):
        return f"<candidate function {self.__name__}>"


_NO_IMPORT = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "webbrowser", "pydoc",
              "ensurepip", "venv", "lib2to3", "__main__"}


def exported_names(plan, program, link):
    """The candidate's names as the test code sees them: a proxy for each function the plan says the
    candidate supplies (decided from the job, never from the program), and the server's own import of
    a standard module the tests read and the program imported under its own name (`import math`).
    Nothing else of the program: no values, no other functions, no builtin it shadows."""
    import importlib
    out = {}
    for name in plan.candidate:
        if program.get(name) == "f":
            out[name] = Proxy(link, name)
    for name in plan.modules:
        if program.get(name) == ("m", name) and name not in _NO_IMPORT:
            try:
                out[name] = importlib.import_module(name)
            except Exception:
                pass
    return out


def program_names(ready):
    """{name: "f" | ("m", module name)} from C's "ready" list; anything malformed is ignored."""
    program = {}
    for item in ready[:100000]:
        if type(item) is not list or len(item) < 2 or type(item[0]) is not str or len(item[0]) > 200:
            continue
        if item[1] == "f":
            program[item[0]] = "f"
        elif item[1] == "m" and len(item) == 3 and type(item[2]) is str and len(item[2]) <= 200:
            program[item[0]] = ("m", item[2])
    return program


class JobTimeout(BaseException):
    """Raised by SIGALRM in the server when a job's whole budget is spent (BaseException: test code's
    `except Exception` does not swallow it; the timer re-fires in case a bare `except:` does)."""


_ARMED = [None]                 # the job's deadline while its tests run


def _on_alarm(signum, frame):
    if _ARMED[0] is not None and time.monotonic() >= _ARMED[0]:    # C can send SIGALRM too: check
        raise JobTimeout()


def run_tests(job, lim, link, report):
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
    if plan.prefetch:
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
        report["errors"].append(": ".join(clean_text(x, 500) for x in ready[1:4]))
        return
    report["load"] = "ok"
    ns = {"__name__": "__main__", "__builtins__": dict(builtins.__dict__)}
    try:
        link.deadline = time.monotonic() + timeout
        if plan.prompt is not None:                     # helpers the prompt implements: the server's own
            exec(plan.prompt, ns)
    except JobTimeout:
        raise
    except BaseException as e:
        report["bad_test"] = "error"
        report["errors"].append(f"the prompt's own code failed: {type(e).__name__}: {_short(e)}")
        return
    ns.update(exported_names(plan, program_names(ready[1]), link))
    try:
        for code in setup:
            exec(code, ns)
    except (JobTimeout, PrefetchMismatch):
        raise
    except BaseException as e:
        report["setup"] = e.outcome if isinstance(e, CandidateError) else "error"
        report["errors"].append(f"test setup failed: {type(e).__name__}: {_short(e)}")
        return
    link.end_step(cut_short=False)
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
        if outcome != "timeout":
            link.end_step(cut_short=outcome != "pass")
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
    if link.pending:
        raise PrefetchMismatch()
    report["done"] = True
