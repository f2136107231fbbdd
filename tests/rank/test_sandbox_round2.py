"""Adversarial tests of issue 13's classes (docs/sandbox.md, "Threat model"): forged passes through the
test harness, state that survives a job, the syscall filter, Python's own comparisons, the CLI's I/O.

    .venv/bin/python -m pytest tests/rank/test_sandbox_round2.py -q

Sequences of jobs run on ONE worker, so an earlier hostile job meets the later one's sandbox; each
sequence checks both directions: a later correct program still passes, a later wrong one still fails.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap
import time

import pytest

from rank.records import Problem
from rank.sandbox import Job, Sandbox, SandboxConfig, job_for
from rank.sandbox.seccomp import _NR

pytestmark = pytest.mark.timeout(120)


def code(src: str) -> str:
    return textwrap.dedent(src).lstrip()


@pytest.fixture(scope="module")
def one():
    """One worker: every job of a test meets what the previous one left."""
    with Sandbox(SandboxConfig(workers=1, timeout_s=2.0, job_timeout_s=6.0, memory_mb=512)) as sb:
        yield sb


RIGHT = Job(id="right", code="def g(x):\n    return x + 1\n", tests=["assert g(1) == 2", "assert g(5) == 6"])
WRONG = Job(id="wrong", code="def g(x):\n    return x\n", tests=["assert g(1) == 2", "assert g(5) == 6"])


def after(sb, hostile: Job, *more: Job):
    """Run `hostile`, then a right and a wrong program (and `more`) on the same worker."""
    verdicts = sb.run([hostile, RIGHT, WRONG, *more])
    assert verdicts[1].status == "passed", verdicts[1]
    assert verdicts[2].status == "failed", verdicts[2]
    return verdicts


# ---------------------------------------------------------------- 1. forged passes

@pytest.mark.parametrize("program,tests,entry", [
    # a builtin the tests wrap around the entry point, with the entry point not a function at all
    ("sorted = lambda x: 0\nf = 5\n", ["assert sorted(f(3)) == sorted([3, 1, 2])"], None),
    ("sorted = lambda x: 0\nf = 5\n", ["assert sorted(f(3)) == sorted([3, 1, 2])"], "f"),
    ("def len(x):\n    return 3\ndef f(x):\n    return []\n", ["assert len(f(3)) == 3"], "f"),
    ("def isinstance(*a):\n    return True\ndef f():\n    return 'x'\n", ["assert isinstance(f(), int)"], None),
    # a test helper the candidate redefines, and a constant the test reads
    ("def check_pair(a, b):\n    return True\ndef f(x):\n    return 0\n", ["assert check_pair(f(1), 2)"], "f"),
    ("EXPECTED = 0\ndef f(x):\n    return 0\n", ["assert f(1) == EXPECTED"], "f"),
])
def test_only_the_entry_point_comes_from_the_candidate(run, program, tests, entry):
    v = run(program, tests, entry_point=entry)
    assert v.status in ("failed", "runtime_error") and v.passed == 0, v


def test_prompt_helpers_are_the_servers_own():
    """HumanEval/38 style: the prompt implements encode_cyclic; a candidate that redefines it as the
    identity (with decode as the identity) must not pass."""
    prompt = code('''
        def encode(s: str):
            return "".join(chr(ord(c) + 1) for c in s)

        def decode(s: str):
            """Inverse of encode."""
        ''')
    test = "def check(candidate):\n    for s in ['ab', 'xyz']:\n        assert candidate(encode(s)) == s\n"
    problem = Problem(id="p", prompt=prompt, entry_point="decode", test=test)
    honest = prompt + '    return "".join(chr(ord(c) - 1) for c in s)\n'
    forged = "def encode(s):\n    return s\ndef decode(s):\n    return s\n"
    with Sandbox(SandboxConfig(workers=1)) as sb:
        good, bad = sb.run([job_for(problem, honest, "h"), job_for(problem, forged, "f")])
    assert good.status == "passed", good
    assert bad.status == "failed", bad


HOSTILE_PLANS = [
    ["assert f(1) == 2, f(9)", "assert f(2) == 3"],                  # a call in an assert's message
    ["assert f(1) == 2 or f(5) == 0", "assert f(2) == 3"],           # a short-circuit
    ["for x in (1, 2):\n    assert f(x) == x + 1"],                   # a loop
    ["assert f(1) == 2", "assert f(2) == 3"],                         # plain: calls sent ahead
]


@pytest.mark.parametrize("tests", HOSTILE_PLANS)
def test_a_job_runs_once_so_a_second_try_cannot_pass(one, tests):
    """The candidate answers wrongly in its first process and rightly in any later one of the same
    job (told apart by a file it leaves in /tmp): a re-run would pass it. Nothing is re-run."""
    sneaky = Job(id="sneaky", code=code("""
        import os
        first = not os.path.exists("/tmp/seen")
        open("/tmp/seen", "w").close()
        def f(x):
            return -1 if first else x + 1
        """), tests=tests)
    (v,) = one.run([sneaky])
    assert v.status == "failed" and v.passed == 0, v


@pytest.mark.parametrize("tests", HOSTILE_PLANS)
@pytest.mark.parametrize("answer", ["-1", "x + 1 if prefetched else -1", "-1 if prefetched else x + 1"])
def test_each_job_starts_exactly_one_candidate_process(one, tests, answer):
    """Counted by the PID namespace's counter between two probes on the same worker: one process per
    job, whatever the candidate answers, and whether or not it saw calls sent ahead (peeking at its
    request pipe at start-up, the way it could tell a first run from a re-run)."""
    probe = Job(id="probe", code="import os\nprint(os.getpid())\ndef g():\n    return 1\n",
                tests=["assert g() == 1"])
    job = Job(id="job", code=code(f"""
        import select
        prefetched = bool(select.select([3], [], [], 0.05)[0])
        def f(x):
            return {answer}
        """), tests=tests)
    a, v, c = one.run([probe, job, probe])
    assert int(c.stdout.split()[0]) - int(a.stdout.split()[0]) == 2, (a.stdout, v, c.stdout)


def test_answers_stay_aligned_when_a_step_is_cut_short(one):
    """Calls sent ahead (prefetch): when a test raises before it reads all its answers, the rest are
    dropped, so the next test reads its own answer and not a left-over one."""
    program = "def g(x):\n    raise ValueError(x)\ndef f(x):\n    return x * 10\ndef h(x):\n    return x\n"
    job = Job(id="aligned", code=program, tests=["assert g(1) + f(7) == 0", "assert h(5) == 5",
                                                  "assert [f(1), g(2), f(3)] == []", "assert h(6) == 6"])
    (v,) = one.run([job])
    assert (v.status, v.passed, v.outcomes) == ("partial", 2, ["error", "pass", "error", "pass"]), v


@pytest.mark.parametrize("answer", [
    "'\\ud800' * 100",                                       # a lone surrogate
    "'x' * (6 << 20)",                                       # megabytes of text
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "10 ** 5000",                                            # more digits than int() parses
    "float('nan')",
])
def test_odd_answers_never_break_the_server(one, answer):
    """Values and messages of any size or encoding: a verdict for that job, the worker goes on."""
    odd = Job(id="odd", code=f"def f():\n    return {answer}\ndef g():\n    raise ValueError({answer})\n",
              tests=["assert f() == 1", "assert g() == 1, f()"])
    v, *_ = after(one, odd)
    assert v.status in ("failed", "runtime_error", "timeout") and v.passed == 0, v    # megabytes under load
    json.dumps(v.__dict__).encode("utf-8")                          # encodable everywhere
    v.error.encode("utf-8"), v.stdout.encode("utf-8")


def test_forged_frames_in_the_answer_channel(one):
    """C writes malformed frames itself: junk, a wrong 'ready', an over-long length, bad value tags."""
    for junk in (b"\x00\x00\x00\x05[1,2", b"\x00\x00\x00\x0b[\"ready\",1]", b"\x7f\xff\xff\xff",
                 b'\x00\x00\x00\x10["ok",{"T":"id"}]', b'\x00\x00\x00\x0f["ok",{"d":[1]}]'):
        forger = Job(id="forger", code=f"import os\nos.write(4, {junk!r})\ndef f():\n    return 1\n",
                     tests=["assert f() == 1"])
        v, *_ = after(one, forger)
        assert v.status != "passed", (junk, v)


def test_decoding_and_comparing_is_bounded_by_the_job_timeout():
    """Ints whose hashes all collide make building a set quadratic: the job timer still ends it."""
    bomb = Job(id="bomb", code="def f():\n    return {k * (2 ** 61 - 1) for k in range(60000)}\n",
               tests=["assert len(f()) == 3"])
    with Sandbox(SandboxConfig(workers=1, timeout_s=2.0, job_timeout_s=3.0)) as sb:
        t = time.monotonic()
        v, right = sb.run([bomb, RIGHT])
    assert v.status in ("timeout", "runtime_error", "failed") and v.passed == 0, v
    assert time.monotonic() - t < 20 and right.status == "passed", (v, right)


# ---------------------------------------------------------------- 2. nothing survives a job

def test_a_process_that_looks_dead_does_not_survive(one):
    """A child whose main thread exits (a zombie leader) while another thread keeps writing
    answers for the next job into /tmp."""
    ghost = Job(id="ghost", code=code("""
        import ctypes, os, threading, time
        def keep():
            while True:
                with open("/tmp/answers.json", "w") as fh:
                    fh.write('{"1": 2, "5": 6}')
                time.sleep(0.01)
        def f():
            if os.fork() == 0:
                threading.Thread(target=keep).start()
                time.sleep(0.05)
                ctypes.CDLL(None).syscall(60, 0)        # SYS_exit: only the main thread exits
            time.sleep(0.2)
            return 1
        """), tests=["assert f() == 1"])
    cheat = Job(id="cheat", code=code("""
        import json, time
        def g(x):
            time.sleep(0.05)
            return json.load(open("/tmp/answers.json"))[str(x)]
        """), tests=RIGHT.tests)
    v, _, _, c = after(one, ghost, cheat)
    assert v.status == "passed", v
    assert c.status == "runtime_error", c                 # nothing left to read the answers from


def test_files_the_candidate_made_hard_to_delete_are_gone(one):
    """chmod 000 on files, directories and /tmp itself, nesting beyond PATH_MAX, hard links, odd
    names, an extended attribute and old times on /tmp; the next job sees a fresh /tmp."""
    fresh = Job(id="fresh", code=code("""
        import os
        def look():
            st = os.stat("/tmp")
            return [os.listdir("/tmp"), os.listdir("/dev/shm"), os.listxattr("/tmp"), oct(st.st_mode),
                    int(st.st_mtime) > 10 ** 9]
        """), tests=["assert look()[:3] == [[], [], []] and look()[4]"])
    (before,) = one.run([Job(id="probe", code=fresh.code, tests=["assert look() == 0, look()"])])
    assert "'0o" in before.error, before
    mode = before.error.split("'0o")[1].split("'")[0]
    messy = Job(id="messy", code=code("""
        import os
        def f():
            os.makedirs("/tmp/a", exist_ok=True)
            os.chdir("/tmp/a")
            for i in range(300):                  # far deeper than PATH_MAX
                os.mkdir("d" * 200)
                os.chdir("d" * 200)
            open("x", "w").write("answers")
            os.chdir("/tmp")
            open("/tmp/f", "w").write("1")
            os.link("/tmp/f", "/tmp/\\udcff\\nlink")
            os.chmod("/tmp/f", 0)
            os.makedirs("/dev/shm/s/t", exist_ok=True)
            os.chmod("/dev/shm/s/t", 0)
            os.chmod("/dev/shm/s", 0)
            os.setxattr("/tmp", "user.answer", b"42")
            os.utime("/tmp", (1, 1))
            os.chmod("/tmp/a", 0)
            os.chmod("/tmp", 0o500)
            return 1
        """), tests=["assert f() == 1"])
    v, _, _, seen = after(one, messy, fresh)
    assert v.status == "passed", v
    assert seen.status == "passed", seen
    (again,) = one.run([Job(id="probe2", code=fresh.code, tests=["assert look() == 0, look()"])])
    assert f"'0o{mode}'" in again.error, (before.error, again.error)       # /tmp's own mode is back


def test_ipc_objects_and_message_queues_do_not_survive(one):
    hoard = Job(id="hoard", code=code("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        def f():
            shm = libc.shmget(0, 1 << 20, 0o1600)
            mq = libc.syscall(240, b"/q", 0o100 | 2, 0o600, None)        # mq_open(O_CREAT|O_RDWR)
            return [shm >= 0, mq, ctypes.get_errno()]
        """), tests=["assert f() == [True, -1, 1]"])                      # message queues: EPERM
    look = Job(id="look", code=code("""
        def g(x):
            left = [len(open(f"/proc/sysvipc/{k}").readlines()) - 1 for k in ("shm", "sem", "msg")]
            return x + 1 if left == [0, 0, 0] else 0
        """), tests=RIGHT.tests)
    v, _, _, w = after(one, hoard, look)
    assert v.status == "passed", v
    assert w.status == "passed", w


def test_no_keyring_access(one):
    """add_key/keyctl/request_key are denied, so the harness's session keyring stays out of reach."""
    keys = Job(id="keys", code=code("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        def f():
            out = []
            for args in [(248, b"user", b"rank-test", b"x", 1, -3), (250, 0, -3), (249, b"user", b"k", None, -3)]:
                out.append([libc.syscall(*args), ctypes.get_errno()])
            return out
        def listed():
            text = ""
            for path in ("/proc/keys", "/proc/key-users"):
                try:
                    text += open(path).read()
                except OSError:
                    pass
            return text
        """), tests=["assert f() == [[-1, 1], [-1, 1], [-1, 1]]", "assert listed() == ''"])
    v, *_ = after(one, keys)
    assert v.status == "passed", v
    if platform.system() == "Linux":
        keyring = subprocess.run(["cat", "/proc/keys"], capture_output=True, text=True).stdout
        assert "rank-test" not in keyring


@pytest.mark.skipif(platform.machine() != "x86_64", reason="keyctl's x86_64 number")
def test_the_sandbox_has_its_own_session_keyring():
    """Even with the worker-wide filter off (so that keyctl can be called to look), the sandbox's
    session keyring is a new one, not the harness's."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    ours = libc.syscall(250, 0, -3, 1)                       # KEYCTL_GET_KEYRING_ID, session, create
    look = Job(id="look", code=code("""
        import ctypes
        def f():
            return ctypes.CDLL(None, use_errno=True).syscall(250, 0, -3, 1)
        """), tests=[f"assert f() not in (-1, {ours})"])
    with Sandbox(SandboxConfig(workers=1, seccomp=False)) as sb:
        (v,) = sb.run([look])
    assert ours > 0 and v.status == "passed", (ours, v)


def test_limits_priority_and_affinity_of_others_cannot_be_changed(one):
    """prlimit/setpriority/sched_setaffinity on the server, the zygote (PID 1) or every process of the
    uid are refused; the next job runs with its normal limits and priority."""
    meddler = Job(id="meddler", code=code("""
        import os, resource
        def f():
            errors = 0
            for pid in (1, 2, os.getppid()):
                for call in (lambda: resource.prlimit(pid, resource.RLIMIT_NPROC, (1, 1)),
                             lambda: os.setpriority(os.PRIO_PROCESS, pid, 19),
                             lambda: os.sched_setaffinity(pid, {0})):
                    try:
                        call()
                    except PermissionError:
                        errors += 1
            for call in (lambda: os.setpriority(os.PRIO_USER, 0, 19), lambda: os.setpriority(os.PRIO_PGRP, 0, 19)):
                try:
                    call()
                except PermissionError:
                    errors += 1
            os.setpriority(os.PRIO_PROCESS, 0, 19)      # its own: allowed
            return errors
        """), tests=["assert f() == 11"])
    state = Job(id="state", code=code("""
        import os, resource
        def g():
            return [os.getpriority(os.PRIO_PROCESS, 0), resource.getrlimit(resource.RLIMIT_NPROC),
                    sorted(os.sched_getaffinity(0)), os.sched_getscheduler(0)]
        """), tests=["assert g() == 0, g()"])
    (before,) = one.run([state])
    v, _, _, after_ = after(one, meddler, state)
    assert v.status == "passed", v
    assert "AssertionError: [" in before.error and before.error == after_.error, (before.error, after_.error)


def test_the_server_is_out_of_the_candidates_reach(one):
    """Signals to the server (its pid, kill(-1), pidfd) are refused; PID 1 (the zygote) ignores them."""
    hit = Job(id="hit", code=code("""
        import os, signal
        def f():
            refused = 0
            for pid in (-1, 2, os.getppid()):
                for sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM):
                    try:
                        os.kill(pid, sig)
                    except PermissionError:
                        refused += 1
            try:
                signal.pidfd_send_signal(os.open("/proc/2", os.O_RDONLY), signal.SIGKILL)
            except PermissionError:
                refused += 1
            return refused
        """), tests=["assert f() == 10"])
    v, *_ = after(one, hit)
    assert v.status == "passed", v


# ---------------------------------------------------------------- 4. bounded kernel memory

def test_tmpfs_inodes_are_bounded_and_given_back():
    """Empty files cost no blocks, only inodes: /tmp and /dev/shm hold at most `tmp_inodes` each, and
    the next job finds them all free again."""
    config = SandboxConfig(workers=1, timeout_s=5.0, job_timeout_s=10.0, tmp_inodes=2000)
    hoard = Job(id="hoard", code=code("""
        import os
        def f(root):
            made = 0
            try:
                while made < 100000:
                    open(f"{root}/{made}", "w").close()
                    made += 1
            except OSError as e:
                return [made < 2000, e.errno]
            return [False, 0]
        """), tests=["assert f('/tmp') == [True, 28]", "assert f('/dev/shm') == [True, 28]"])   # ENOSPC
    free = Job(id="free", code=code("""
        import os
        def g():
            return [os.statvfs(d).f_ffree >= os.statvfs(d).f_files - 1 for d in ("/tmp", "/dev/shm")]
        """), tests=["assert g() == [True, True]"])
    with Sandbox(config) as sb:
        v, w = sb.run([hoard, free])
    assert (v.status, v.passed) == ("passed", 2), v
    assert w.status == "passed", w


def test_no_capabilities_and_both_filters_inside(run):
    """bwrap starts as uid 0 of the prelude's namespace: it must still leave the sandbox no capability."""
    v = run(code("""
        def f():
            status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines())
            return [status[k].strip() for k in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb", "NoNewPrivs",
                                                 "Seccomp", "Seccomp_filters")]
        """), ["assert f() == ['0000000000000000'] * 5 + ['1', '2', '2'], f()"])
    assert v.status == "passed", v


# ---------------------------------------------------------------- 3. the syscall filter

X86 = {name: nrs[0] for name, nrs in _NR.items()}


@pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers below are x86_64's")
def test_the_syscall_filter_denies_what_docker_denies(one):
    calls = {"ptrace": (16, 1, 0, 0), "process_vm_readv": (1, 0, 0, 0, 0, 0), "unshare": (0x10000000,),
             "setns": (0, 0), "mount": (b"none", b"/tmp", b"tmpfs", 0, 0), "bpf": (0, 0, 0),
             "perf_event_open": (0, 0, -1, -1, 0), "userfaultfd": (0,), "io_uring_setup": (1, 0),
             "init_module": (0, 0, b""), "kexec_load": (0, 0, 0, 0), "add_key": (0, 0, 0, 0, 0),
             "keyctl": (0,), "mq_open": (b"/q", 0o100, 0o600, 0), "fsopen": (b"tmpfs", 0),
             "pidfd_getfd": (0, 0, 0), "kcmp": (1, 2, 0, 0, 0), "move_pages": (1, 0, 0, 0, 0, 0)}
    denied = Job(id="denied", code=code(f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        CALLS = {({X86[k]: v for k, v in calls.items()})!r}
        def f():
            out = {{}}
            for nr, args in CALLS.items():
                ctypes.set_errno(0)
                out[nr] = (libc.syscall(nr, *args), ctypes.get_errno())
            return out
        def clones():
            ctypes.set_errno(0)
            new_user = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)        # clone(CLONE_NEWUSER|SIGCHLD)
            e1 = ctypes.get_errno()
            v3 = libc.syscall(435, 0, 0)
            return [new_user, e1, v3, ctypes.get_errno()]
        """), tests=[f"assert f() == {({X86[k]: (-1, 1) for k in calls})!r}", "assert clones() == [-1, 1, -1, 38]"])
    v, *_ = after(one, denied)
    assert (v.status, v.passed) == ("passed", 2), v


# ---------------------------------------------------------------- 5. built-ins compare as in Python

def _humaneval(host):
    import gzip
    with gzip.open(host.humaneval(), "rt") as fh:
        return [json.loads(line) for line in fh if line.strip()]


MUTATE = """
def _convert(r):
    if type(r) is bool:
        return int(r)
    if type(r) is int and abs(r) < 2 ** 50:
        return float(r)
    return r
_original = {entry}
def {entry}(*args, **kwargs):
    return _convert(_original(*args, **kwargs))
"""

# the other way round, and containers: equal where Python says so (1.0 == 1 == True), unequal where
# it does not ((1, 2) != [1, 2]); either way the sandbox must agree with Python
MUTATE_BACK = """
def _convert(r):
    if type(r) is float and r.is_integer() and abs(r) < 2 ** 50:
        return int(r)
    if type(r) is int and r in (0, 1):
        return bool(r)
    if type(r) is list:
        return tuple(r)
    if type(r) is tuple:
        return list(r)
    return r
_original = {entry}
def {entry}(*args, **kwargs):
    return _convert(_original(*args, **kwargs))
"""

PLAIN = """
import json, sys
results = {}
for row in json.load(sys.stdin):
    ns = {"__name__": "__main__"}
    try:
        exec(row["code"], ns)
        exec(row["test"], ns)
        ns["check"](ns[row["entry_point"]])
        results[row["id"]] = True
    except BaseException:
        results[row["id"]] = False
print(json.dumps(results))
"""


def test_verdicts_match_plain_python_on_honest_programs(sandbox, host):
    """HumanEval canonical solutions and mutants that return an equal value of another built-in type
    (True -> 1, 3 -> 3.0, 3.0 -> 3, 1 -> True) or a list for a tuple and back: the sandbox passes
    exactly those that a plain Python run passes."""
    rows = _humaneval(host)
    corpus = []
    for r in rows:
        base = r["prompt"] + r["canonical_solution"]
        corpus.append((r, r["task_id"], base))
        corpus.append((r, r["task_id"] + "/mutant", base + MUTATE.format(entry=r["entry_point"])))
        corpus.append((r, r["task_id"] + "/back", base + MUTATE_BACK.format(entry=r["entry_point"])))
    plain_in = json.dumps([{"id": cid, "code": src, "test": r["test"], "entry_point": r["entry_point"]}
                           for r, cid, src in corpus])
    plain = json.loads(subprocess.run([sys.executable, "-c", PLAIN], input=plain_in, capture_output=True,
                                      text=True, timeout=300, check=True).stdout)
    jobs = [job_for(Problem(id=r["task_id"], prompt=r["prompt"], entry_point=r["entry_point"], test=r["test"]),
                    src, cid) for r, cid, src in corpus]
    ours = {v.candidate_id: v.status == "passed" for v in sandbox.run(jobs)}
    differ = [cid for cid in plain if plain[cid] != ours[cid]]
    assert not differ, differ
    assert sum(plain.values()) > 300                        # most mutants pass, as in Python
    assert sum(not ok for ok in plain.values()) > 20        # and some fail (list vs tuple), as in Python


# ---------------------------------------------------------------- 6. the CLI's own input and output

def test_cli_names_the_line_of_invalid_utf8_and_escapes_what_utf8_cannot_hold(tmp_path, capsys):
    from rank.execute import main
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "a", "code": "x=1", "tests": ["assert x == 1"]}\n{"id": "b\xff", "code": ""}\n')
    assert main(["--in", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and "UTF-8" in err
    odd = tmp_path / "odd.jsonl"
    row = {"id": "\ud800odd", "code": "def f():\n    print('\\udcff')\n    return '\\ud800'\n",
           "tests": ["assert f() == 1"]}
    odd.write_text(json.dumps(row) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["--in", str(odd), "--out", str(out), "--workers", "1"]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in written] == ["\ud800odd"] and written[0]["status"] == "failed"
    assert main(["--in", str(odd), "--out", str(out), "--workers", "1"]) == 0      # resume: nothing to do
    assert len(out.read_text().splitlines()) == 1


# ---------------------------------------------------------------- the filters' decisions, without a kernel

def _run_bpf(program: bytes, nr: int, arch: int, args=(0,) * 6) -> int:
    """A classic-BPF interpreter for the instructions rank.sandbox.seccomp emits (ld abs, jeq, jge,
    jset, ret) over struct seccomp_data {nr, arch, ip, args[6]} (little-endian)."""
    import struct as st
    args = (list(args) + [0] * 6)[:6]
    data = st.pack("<iIQ6Q", nr, arch, 0, *[a & (2 ** 64 - 1) for a in args])
    code = [st.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    pc, acc = 0, 0
    while True:
        op, jt, jf, k = code[pc]
        if op == 0x20:
            acc = st.unpack_from("<I", data, k)[0]
        elif op in (0x15, 0x35, 0x45):
            hit = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[op]
            pc += jt if hit else jf
        elif op == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")
        pc += 1


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_filter_decisions(monkeypatch, machine):
    from rank.sandbox import seccomp as S
    monkeypatch.setattr(S.platform, "machine", lambda: machine)
    column, arch = S._ARCHES[machine]
    nr = {name: nrs[column] for name, nrs in S._NR.items()}
    base, cand = S.sandbox_filter(), S.candidate_filter(2)
    eperm, allow = S._errno(1), S.ALLOW
    for name in S.DENIED:
        if nr[name] is not None:
            assert _run_bpf(base, nr[name], arch) == eperm, name
    assert _run_bpf(base, 0 if machine == "x86_64" else 63, arch) == allow          # read
    assert _run_bpf(base, nr["clone3"], arch) == S._errno(38)
    assert _run_bpf(base, nr["clone"], arch, (17,)) == allow                       # fork
    assert _run_bpf(base, nr["clone"], arch, (0x10000000 | 17,)) == eperm          # CLONE_NEWUSER
    assert _run_bpf(base, nr["prlimit64"], arch, (0, 7)) == allow
    assert _run_bpf(base, nr["prlimit64"], arch, (1, 7)) == eperm
    assert _run_bpf(base, nr["prlimit64"], arch, (2 ** 32, 7)) == allow           # the kernel reads 32 bits
    assert _run_bpf(base, nr["setpriority"], arch, (0, 0, 19)) == allow
    assert _run_bpf(base, nr["setpriority"], arch, (2, 0, 19)) == eperm            # PRIO_USER
    assert _run_bpf(base, nr["setpriority"], arch, (0, 5, 19)) == eperm
    assert _run_bpf(base, nr["sched_setaffinity"], arch, (1,)) == eperm
    assert _run_bpf(base, nr["ioprio_set"], arch, (1, 0)) == allow
    assert _run_bpf(base, nr["ioprio_set"], arch, (1, 9)) == eperm
    assert _run_bpf(base, nr["kill"], arch, (2, 9)) == allow                       # the worker-wide filter
    assert _run_bpf(base, 1, 0x40000003) == S.KILL                                 # a foreign arch
    for target in (2, -2, -1, 1):
        assert _run_bpf(cand, nr["kill"], arch, (target, 9)) == eperm, target
    assert _run_bpf(cand, nr["kill"], arch, (5, 9)) == allow
    assert _run_bpf(cand, nr["kill"], arch, (0, 9)) == allow
    assert _run_bpf(cand, nr["tgkill"], arch, (2, 2, 9)) == eperm
    assert _run_bpf(cand, nr["pidfd_open"], arch, (2, 0)) == eperm
    assert _run_bpf(cand, nr["pidfd_send_signal"], arch, (3, 9)) == eperm
