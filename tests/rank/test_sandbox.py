"""rank.sandbox: statuses, per-test counts, HumanEval and MBPP references, configuration.

    .venv/bin/python -m pytest tests/rank/test_sandbox.py -q
"""
from __future__ import annotations

import gzip
import json
import pickle
import re
import textwrap

import pytest

from rank.records import STATUSES, Problem
from rank.sandbox import Job, Sandbox, SandboxConfig, SandboxUnavailable, job_for, run_jobs, verdict_from_report

MBPP = "mbpp/mbpp.jsonl"


def code(src: str) -> str:
    return textwrap.dedent(src).lstrip()


# ---------------------------------------------------------------- statuses and counts

ADD = "def add(a, b):\n    return a + b\n"


@pytest.mark.parametrize("program,tests,expected", [
    (ADD, ["assert add(1, 2) == 3", "assert add(2, 2) == 4"], ("passed", 2, 2)),
    (ADD, ["assert add(1, 2) == 3", "assert add(2, 2) == 5"], ("partial", 1, 2)),
    (ADD, ["assert add(1, 2) == 4", "assert add(2, 2) == 5"], ("failed", 0, 2)),
    ("def add(a, b):\n    return a / 0\n", ["assert add(1, 2) == 3"], ("runtime_error", 0, 1)),
    ("def add(a, b) return a", ["assert add(1, 2) == 3"], ("compile_error", 0, 1)),
    ("exec('def x(:')\n" + ADD, ["assert add(1, 2) == 3"], ("compile_error", 0, 1)),
    ("raise ValueError('top')\n" + ADD, ["assert add(1, 2) == 3"], ("runtime_error", 0, 1)),
    ("def add(a, b):\n    while True:\n        pass\n", ["assert add(1, 2) == 3"], ("timeout", 0, 1)),
    ("def add(a, b):\n    return len(bytearray(4 << 30))\n", ["assert add(1, 2) == 3"], ("memory", 0, 1)),
    (ADD, ["assert add(1, 2) == 3", "assert add('a', 1) == 'a1'"], ("partial", 1, 2)),
    (ADD, ["assert add(1, 2) == 3", "assert nosuch(1) == 1"], ("partial", 1, 2)),
    (ADD, ["assert add(1, 2) == 4", "assert add(None, 1) == 1"], ("runtime_error", 0, 2)),
    (ADD, ["assert add(1, 2) ==", "assert add(1, 2) == 3"], ("sandbox_error", 0, 2)),
    (ADD, ["", "assert True", "import math\nassert math.pi > 3"], ("sandbox_error", 0, 0)),
    (ADD, ["assert True", "assert add(1, 2) == 3"], ("passed", 1, 1)),
    ("def add(a, b):\n    return 0\n", ["x = add(1, 1)", "assert x == 2"], ("partial", 1, 2)),
    (ADD, ["assert len([1]) == 1", "assert add(1, 2) == 3"], ("passed", 1, 1)),
    ("def f():\n    return 1\n", ["assert add(1, 2) == 3"], ("runtime_error", 0, 1)),
])
def test_statuses(run, program, tests, expected):
    v = run(program, tests)
    assert v.status in STATUSES
    assert (v.status, v.passed, v.total) == expected, v
    assert v.duration_s > 0


def test_check_function_is_split_into_its_asserts(run):
    test = code("""
        METADATA = {"author": "x"}
        def check(candidate):
            assert candidate(1, 2) == 3
            assert True, "not a test of the candidate"
            x = 5
            assert candidate(x, 1) == 6
            assert candidate(0, 0) == 1
        """)
    v = run(ADD, test=test, entry_point="add")
    assert (v.status, v.passed, v.total) == ("partial", 2, 3), v
    assert "line 7" in v.error


def test_a_check_that_never_uses_the_candidate_is_not_a_pass(run):
    for test in ["def check(candidate):\n    pass\n", "def check(candidate):\n    for i in range(3):\n        assert i < 3\n"]:
        v = run(ADD, test=test, entry_point="add")
        assert (v.status, v.total) == ("sandbox_error", 0), v


def test_check_with_loops_counts_as_one_test(run):
    test = code("""
        def check(candidate):
            for i in range(20):
                assert candidate(i, 1) == i + 1
        """)
    assert (run(ADD, test=test, entry_point="add").status, 1) == ("passed", 1)
    v = run("def add(a, b):\n    return 3\n", test=test, entry_point="add")
    assert (v.status, v.passed, v.total) == ("failed", 0, 1)


STATEFUL = "calls = []\ndef f(x):\n    calls.append(x)\n    return len(calls)\n"


@pytest.mark.parametrize("tests,expected", [
    (["assert f(0) == 1", "assert f(0) == 2", "assert f(9) == 3"], ("passed", 3)),          # prefetched
    (["assert f(0) == 1 or f(5) == 0", "assert f(7) == 2"], ("passed", 2)),                # short-circuit
    (["for _ in range(3):\n    assert f(1) >= 1", "assert f(1) == 4"], ("passed", 2)),     # call in a loop
    (["x = 3\nassert f(x) == 1", "assert f(2) == 2"], ("passed", 2)),                     # not literal
    (["assert f(1) == 1", "assert f(1) == 1", "assert f(1) == 3"], ("partial", 2)),
    (["assert f(1) == 1, f(8)", "assert f(1) == 2, str(f(8))"], ("passed", 2)),          # message not run
    (["assert f(1) == 5, f(8)", "assert f(1) == 3, f(8)"], ("partial", 1)),               # message run: 1,2,3
])
def test_calls_reach_the_candidate_exactly_in_test_order(run, tests, expected):
    """Calls may be sent ahead (prefetch); whatever the tests do, the candidate sees the true sequence."""
    for _ in range(2):                          # the second run uses the cached plan
        v = run(STATEFUL, tests)
        assert (v.status, v.passed) == expected, v


def test_tests_use_the_prompts_helpers_not_the_programs(run):
    """Helpers the prompt implements are the server's own (HumanEval/38's encode_cyclic); the program's
    other names (helpers, constants) are not visible to the tests."""
    prompt = "def helper(x):\n    return x * 10\n\ndef f(x):\n    \"\"\"helper(x) + 1\"\"\"\n"
    test = "def check(candidate):\n    assert candidate(2) == helper(2) + 1\n"
    honest = prompt + "    return helper(x) + 1\n"
    v = run(honest, test=test, entry_point="f", prompt=prompt)
    assert (v.status, v.passed, v.total) == ("passed", 1, 1), v
    forged = "def helper(x):\n    return 0\ndef f(x):\n    return 1\n"     # its own helper: not used
    v = run(forged, test=test, entry_point="f", prompt=prompt)
    assert (v.status, v.passed) == ("failed", 0), v
    v = run("SCALE = 10\ndef f(x):\n    return x\n", ["assert f(SCALE) == 10"], entry_point="f")
    assert v.status == "runtime_error" and "SCALE" in v.error, v


def test_the_zygote_warm_up_leaves_nothing_in_the_candidate(run):
    # The zygote runs a fixed dummy program through C's code paths before any job; a candidate must
    # still start from an empty namespace and see its own definitions of the same names.
    program = ("def f():\n    return sorted(k for k in globals() if not k.startswith('__'))\n"
               "def limit():\n    return LIMIT\n")
    v = run(program, ["assert f() == ['f', 'limit']"])
    assert (v.status, v.passed, v.total) == ("passed", 1, 1), v
    v = run(program, ["assert limit() == 10"])            # the dummy program's LIMIT is not there
    assert (v.status, v.passed) == ("runtime_error", 0), v


def test_plain_data_round_trip(run):
    program = code("""
        from collections import Counter, OrderedDict, namedtuple
        P = namedtuple("P", "x y")
        def values():
            return [None, True, 3, 2 ** 100, -1.5, float("inf"), "s", b"b", (1, (2,)), {1, 2}, frozenset([3]),
                    {"k": [1]}, {(1, 2): 3}, 1 + 2j]
        def counter():
            return Counter("aab")
        def point():
            return P(1, 2)
        def ordered():
            return OrderedDict(a=1)
        def echo(*args, **kwargs):
            return [args, kwargs]
        """)
    v = run(program, [
        "assert values() == [None, True, 3, 2 ** 100, -1.5, float('inf'), 's', b'b', (1, (2,)), {1, 2}, "
        "frozenset([3]), {'k': [1]}, {(1, 2): 3}, 1 + 2j]",
        "assert counter() == {'a': 2, 'b': 1}",
        "assert point() == (1, 2)",
        "assert ordered() == {'a': 1}",
        "assert echo(1, [2], k=(3,)) == [(1, [2]), {'k': (3,)}]",
        "assert values()[2] == 3.0",
    ])
    assert (v.status, v.passed) == ("passed", 6), v.error


def test_stdout_captured_and_truncated():
    with Sandbox(SandboxConfig(workers=1, output_limit=100)) as sb:
        (v,) = sb.run([Job(id="p", code="print('hello')\ndef f():\n    print('x' * 500)\n    return 1\n",
                           tests=["assert f() == 1"])])
    assert v.status == "passed"
    assert v.stdout.startswith("hello\nxxx") and "truncated" in v.stdout and len(v.stdout) < 200


def test_job_timeout_bounds_a_slow_job():
    slow = Job(id="slow", code="import time\ndef f(x):\n    time.sleep(0.6)\n    return x\n",
               tests=[f"assert f({i}) == {i}" for i in range(10)])
    with Sandbox(SandboxConfig(workers=1, timeout_s=1.0, job_timeout_s=2.0)) as sb:
        (v,) = sb.run([slow])
    assert v.status == "partial" and 1 <= v.passed < 10 and v.total == 10, v
    assert "job_timeout_s" in v.error


# ---------------------------------------------------------------- the API

def test_oversized_job_is_a_sandbox_error(sandbox):
    (v,) = sandbox.run([Job(id="big", code="x = 1\n" + "#" * (9 << 20), tests=["assert x == 1"])])
    assert v.status == "sandbox_error" and "larger" in v.error


def test_order_ids_and_run_jobs_one_shot():
    jobs = [Job(id=f"c{i}", code=f"def f():\n    return {i}\n", tests=[f"assert f() == {i if i % 2 else -1}"])
            for i in range(6)]
    verdicts = run_jobs(jobs, SandboxConfig(workers=2))
    assert [v.candidate_id for v in verdicts] == [j.id for j in jobs]
    assert [v.status for v in verdicts] == ["failed", "passed"] * 3


def test_an_abandoned_iter_run_leaves_the_sandbox_usable(sandbox):
    jobs = [Job(id=f"a{i}", code=f"def f():\n    return {i}\n", tests=[f"assert f() == {i}"]) for i in range(20)]
    for _ in sandbox.iter_run(jobs):
        break                                       # the rest of this run is dropped
    verdicts = sandbox.run(jobs[:3])
    assert [(v.candidate_id, v.status) for v in verdicts] == [("a0", "passed"), ("a1", "passed"), ("a2", "passed")]


def test_jobs_and_config_are_plain_picklable_data():
    job = Job(id="a", code="x=1", tests=["assert x == 1"])
    assert pickle.loads(pickle.dumps(job)) == job
    assert pickle.loads(pickle.dumps(SandboxConfig(workers=3))).workers == 3


@pytest.mark.parametrize("job,field", [
    (Job(id="", code="x", tests=["assert 1"]), "id"),
    (Job(id="a", code="x"), "tests"),
    (Job(id="a", code="x", tests=[]), "tests"),
    (Job(id="a", code="x", tests=["assert 1", 3]), "tests"),
    (Job(id="a", code="x", test="def check(c): pass"), "entry_point"),
    (Job(id="a", code="x", tests=["assert 1"], language="cobol"), "language"),
])
def test_bad_jobs_are_rejected(sandbox, job, field):
    with pytest.raises(ValueError, match=f"field '{field}'"):
        sandbox.run([job])


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxConfig(timeout_s=0)
    with pytest.raises(ValueError, match="workers"):
        SandboxConfig(workers=0)


def test_missing_bwrap_refuses_to_run():
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        Sandbox(SandboxConfig(bwrap="/nonexistent/bwrap"))


def test_unsafe_mode_runs_and_warns_on_every_run(capsys):
    with Sandbox(SandboxConfig(workers=1, unsafe=True, bwrap="/nonexistent/bwrap")) as sb:
        for _ in range(2):
            with pytest.warns(RuntimeWarning, match="WITHOUT bubblewrap"):
                (v,) = sb.run([Job(id="u", code=ADD, tests=["assert add(1, 2) == 3", "assert add(1, 1) == 3"])])
            assert (v.status, v.passed) == ("partial", 1)
    assert capsys.readouterr().err.count("WITHOUT bubblewrap") == 2


def test_unsafe_mode_still_kills_the_process_group(host):
    marker = host.unique("rank-unsafe-child")
    job = Job(id="u", code=code(f"""
        import subprocess, time
        def f():
            p = subprocess.Popen(["python3", "-c", "import time; time.sleep(300)  # {marker}"])
            time.sleep(0.3)
            print("child", p.pid, flush=True)
            time.sleep(30)
        """), tests=["assert f() == 1"])
    with pytest.warns(RuntimeWarning):
        (v,) = run_jobs([job], SandboxConfig(workers=1, unsafe=True, timeout_s=1.0))
    assert v.status == "timeout" and v.stdout.startswith("child "), v
    assert host.wait_gone(marker) == []


@pytest.mark.parametrize("report,expected", [
    ({"load": "ok", "total": 2, "outcomes": ["pass", "pass"], "done": True}, ("passed", 2)),
    ({"load": "ok", "total": 2, "outcomes": ["pass", "pass"], "done": False}, ("partial", 2)),
    ({"load": "ok", "total": 2, "outcomes": ["pass", "pass"], "done": True, "job_timeout": True}, ("partial", 2)),
    ({"load": "ok", "total": 3, "outcomes": ["pass", "pass"], "done": True}, ("partial", 2)),
    ({"load": "ok", "total": 0, "outcomes": [], "done": True}, ("sandbox_error", 0)),
    ({"load": None, "total": 1, "outcomes": [], "done": False}, ("runtime_error", 0)),
    ({"load": None, "total": 1, "outcomes": [], "done": False, "job_timeout": True}, ("timeout", 0)),
    ({"load": "ok", "total": 2, "outcomes": ["fail", "timeout"], "done": False}, ("timeout", 0)),
    ({"load": "ok", "total": 2, "outcomes": ["fail", "unsupported"], "done": True}, ("sandbox_error", 0)),
    ({"load": "ok", "total": 2, "outcomes": ["fail", "fail"], "done": True}, ("failed", 0)),
    ({"load": "ok", "total": 2, "outcomes": ["pass"], "setup": "error", "done": False}, ("partial", 1)),
    ({"load": "ok", "total": 2, "outcomes": [], "setup": "memory", "done": False}, ("memory", 0)),
    ({"bad_test": "error", "load": "ok", "total": 2, "outcomes": ["pass", "pass"], "done": True}, ("sandbox_error", 0)),
])
def test_verdict_rules(report, expected):
    v = verdict_from_report(Job(id="j", code="", tests=["a", "b"]), report)
    assert (v.status, v.passed) == expected
    assert v.status != "passed" or report.get("done")
    assert v.outcomes.count("pass") == v.passed      # the per-test record agrees (rank.strategies.codet)


# ---------------------------------------------------------------- reference data

def _problem(row) -> Problem:
    """A HumanEval row as the toolkit's Problem (what evol.seeds loads)."""
    return Problem(id=row["task_id"], prompt=row["prompt"], entry_point=row["entry_point"], test=row["test"])


def _humaneval(host):
    path = host.humaneval()
    if not path.exists():
        pytest.skip(f"HumanEval data not found at {path}")
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_all_humaneval_canonical_solutions_pass(sandbox, host):
    problems = _humaneval(host)
    jobs = [job_for(_problem(p), p["prompt"] + p["canonical_solution"], p["task_id"]) for p in problems]
    verdicts = sandbox.run(jobs)
    failing = [(v.candidate_id, v.status, v.error[:200]) for v in verdicts if v.status != "passed"]
    assert len(verdicts) == 164 and not failing
    assert sum(v.total for v in verdicts) > 5 * len(verdicts)          # checks were split into asserts


def test_broken_humaneval_solutions_fail(sandbox, host):
    problems = _humaneval(host)
    broken = []
    for p in problems:
        indent = re.match(r"\s*", p["canonical_solution"]).group(0) or "    "
        broken.append(job_for(_problem(p), p["prompt"] + f"{indent}return None\n" + p["canonical_solution"],
                              p["task_id"]))
    verdicts = sandbox.run(broken)
    assert not [v.candidate_id for v in verdicts if v.status == "passed"]
    assert {v.status for v in verdicts} <= {"failed", "partial", "runtime_error", "timeout"}
    swapped = [job_for(_problem(a), a["prompt"] + b["canonical_solution"], a["task_id"])
               for a, b in zip(problems[:40], problems[1:41])]
    assert not [v.candidate_id for v in sandbox.run(swapped) if v.status == "passed"]


def _mbpp(host, limit=None):
    path = host.data / MBPP
    if not path.exists():
        pytest.skip(f"MBPP data not found at {path} (MBPP ships only in ../shared/data)")
    from evol.seeds import load_mbpp             # the loader the toolkit uses: setup code goes with the tests
    return load_mbpp(path)[:limit]


def test_mbpp_reference_solutions(sandbox, host):
    problems = _mbpp(host, 60)
    jobs = [job_for(p, p.reference, str(p.meta["task_id"])) for p in problems]
    verdicts = sandbox.run(jobs)
    passed = [v for v in verdicts if v.status == "passed"]
    assert len(passed) == 60, [(v.candidate_id, v.status, v.error[:120]) for v in verdicts if v.status != "passed"]
    assert all(v.total == len(p.tests) for v, p in zip(verdicts, problems))
    wrong = [Job(id=j.id, code=j.code + "\n\ndef _noop():\n    pass\n", tests=[t.replace("==", "!=", 1) for t in j.tests],
                 entry_point=j.entry_point) for j in jobs[:20]]
    assert not [v for v in sandbox.run(wrong) if v.status == "passed"]


@pytest.mark.slow
def test_all_mbpp_reference_solutions(host):
    """All 974: 971 pass; 367, 601 and 927 use classes the program defines (Node, Pair), which the
    tests do not take from the candidate (docs/sandbox.md). Task 123 runs for seconds: generous limits."""
    problems = _mbpp(host)
    with Sandbox(SandboxConfig(timeout_s=30.0, job_timeout_s=90.0)) as sb:
        verdicts = sb.run([job_for(p, p.reference, str(p.meta["task_id"])) for p in problems])
    failing = {v.candidate_id for v in verdicts if v.status != "passed"}
    assert len(problems) == 974 and failing <= {"367", "601", "927"}, failing


# ---------------------------------------------------------------- the plain-data codec (no sandbox needed)

def test_codec_round_trips_exact_types_and_rejects_everything_else():
    from rank.sandbox import wire as S
    values = [None, True, 1, -2 ** 70, 1.5, float("inf"), "s", b"x", (1, [2, {3: (4,)}]), {1, 2}, frozenset(),
              {"a": frozenset({1})}, 1j, int, str]
    for v in values:
        d = json.loads(json.dumps(S.encode(v)), object_hook=S._hook)
        assert type(d) is type(v) and d == v
    for bad in ['{"T": "eval"}', '{"d": [[[1], 2]]}', '{"s": [[1]]}', '{"i": "zz"}', '{"x": 1}', '{"t": 1}',
                '{"a": 1, "b": 2}', "[" * 100000 + "]" * 100000]:
        with pytest.raises((ValueError, RecursionError)):
            json.loads(bad, object_hook=S._hook)
    class Evil(int):
        def __eq__(self, other):
            return True
    assert S.encode(Evil(3)) == 3 and type(S.encode(Evil(3))) is int
    for unsupported in [object(), lambda: 0, iter([1]), type("C", (), {})]:
        with pytest.raises(S.Unsupported):
            S.encode(unsupported)


def test_buffered_reader_frames_deadline_and_limits():
    """rank.sandbox.wire.Reader (C's requests, the tester's answers): several frames in one read come
    back one at a time and in order, a partial frame waits for the rest, and deadline, EOF and MAX_MSG
    behave as in `recv`."""
    import os
    import struct
    import time
    from rank.sandbox import wire as S
    r, w = os.pipe()
    try:
        reader = S.Reader(r)
        os.write(w, S.frame(["ok", 1]) + S.frame(["ok", {"t": [2]}]) + S.frame(["err", "E", "m"])[:5])
        assert reader.recv(time.monotonic() + 1) == ["ok", 1]
        assert reader.recv(time.monotonic() + 1, hook=S._hook) == ["ok", (2,)]
        with pytest.raises(S.Timeout):                  # only part of the third frame has arrived
            reader.recv(time.monotonic() + 0.05)
        os.write(w, S.frame(["err", "E", "m"])[5:])
        assert reader.recv(time.monotonic() + 1) == ["err", "E", "m"]
        big = S.frame(list(range(100000)))             # larger than one read
        os.set_blocking(w, False)
        sent = os.write(w, big)
        os.set_blocking(w, True)
        import threading
        t = threading.Thread(target=S.write_all, args=(w, big[sent:]))
        t.start()
        assert reader.recv(time.monotonic() + 5) == list(range(100000))
        t.join()
        os.write(w, struct.pack(">I", S.MAX_MSG + 1))
        with pytest.raises(ValueError):
            reader.recv(time.monotonic() + 1)
    finally:
        os.close(w)
    reader = S.Reader(r)
    with pytest.raises(S.Closed):
        reader.recv(time.monotonic() + 1)
    os.close(r)


def test_planning_helpers_match_ast_walk():
    """_walk (used instead of ast.walk to plan faster) visits the same nodes as ast.walk."""
    import ast
    from rank.sandbox import plan as P
    src = "def check(c):\n    x = [c(i) for i in range(3) if i]\n    assert c(1) == (2, {3: 'a'}) and not x\n" \
          "import math as m\nclass K:\n    def f(self, *a, **k):\n        return lambda y: y\n"
    tree = ast.parse(src)
    assert sorted(map(id, P._walk(tree))) == sorted(map(id, ast.walk(tree)))
