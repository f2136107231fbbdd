"""Exact and near-duplicate removal among generated problems. Pure Python.

    kept, dropped = exact_dedup(problems)
    kept, dropped = near_dedup(kept, threshold=0.7)
    python -m evol.dedup problems.jsonl --against humaneval mbpp:PATH@test     # summary of what goes

Decontamination against benchmarks is evol/decontam.py; `dedup_and_decontaminate` runs all three.

Every function returns (kept rows, dropped rows) with a reason per dropped row; order is kept
and the first of a group of duplicates survives. Rows are Problems, dicts or strings.
- Near duplicates: Jaccard similarity of 5-token shingles, candidates found with MinHash + LSH
  and then checked exactly, the scheme of BigCode's near-deduplication for StarCoder
  (arXiv:2305.06161; 5-grams and a 0.7 threshold are the defaults here).
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w+")
_MERSENNE = (1 << 61) - 1


@dataclass
class Dropped:
    row: Any
    reason: str


def row_text(row: Any) -> str:
    """The text a row is compared by: a Problem's (or dict's) prompt, or the string itself."""
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        return row["prompt"]
    return row.prompt


def _row_id(row: Any, index: int) -> str:
    rid = row.get("id") if isinstance(row, dict) else getattr(row, "id", None)
    return str(rid) if rid is not None else f"#{index}"


def tokens(text: str) -> list[str]:
    """Lower-cased words and punctuation: whitespace, case and layout changes do not matter."""
    return _TOKEN.findall(text.lower())


def words(text: str) -> list[str]:
    """Lower-cased words only: n-grams of punctuation-heavy code would be too short to mean a leak."""
    return _WORD.findall(text.lower())


def normalize(text: str) -> str:
    return " ".join(tokens(text))


def ngrams(toks: Sequence[str], n: int) -> set[tuple[str, ...]]:
    if len(toks) < n:
        return {tuple(toks)} if toks else set()
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def exact_dedup(rows: Sequence[Any], key: Callable[[Any], str] = row_text,
                droppable: Callable[[Any], bool] = lambda row: True) -> tuple[list, list[Dropped]]:
    """Drop rows whose normalised text equals an earlier row's (unless `droppable(row)` is False)."""
    seen: dict[str, str] = {}
    kept, dropped = [], []
    for i, row in enumerate(rows):
        h = hashlib.sha1(normalize(key(row)).encode()).hexdigest()
        if h in seen and droppable(row):
            dropped.append(Dropped(row, f"exact duplicate of {seen[h]} (normalised text)"))
        else:
            seen[h] = _row_id(row, i)
            kept.append(row)
    return kept, dropped


class MinHash:
    """`num_perm` universal hashes (a*x + b mod 2^61-1) of 64-bit shingle hashes; LSH in bands of `rows`."""

    def __init__(self, num_perm: int = 64, rows: int = 4, seed: int = 0):
        if num_perm % rows:
            raise ValueError(f"num_perm ({num_perm}) must be a multiple of rows ({rows})")
        rng = random.Random(seed)
        self.perms = [(rng.randrange(1, _MERSENNE), rng.randrange(_MERSENNE)) for _ in range(num_perm)]
        self.rows = rows

    def signature(self, shingles: set[tuple[str, ...]]) -> list[int]:
        hs = [int.from_bytes(hashlib.blake2b("\x1f".join(s).encode(), digest_size=8).digest(), "little")
              for s in shingles] or [0]
        return [min((a * h + b) % _MERSENNE for h in hs) for a, b in self.perms]

    def bands(self, sig: list[int]) -> list[tuple]:
        return [(i, tuple(sig[i:i + self.rows])) for i in range(0, len(sig), self.rows)]


def near_dedup(rows: Sequence[Any], key: Callable[[Any], str] = row_text, threshold: float = 0.7,
               n: int = 5, num_perm: int = 64, band_rows: int = 4, seed: int = 0,
               droppable: Callable[[Any], bool] = lambda row: True) -> tuple[list, list[Dropped]]:
    """Drop rows whose n-token-shingle Jaccard similarity with an earlier kept row is >= threshold.

    LSH with bands of `band_rows` (16 bands of 4 by default) proposes pairs with similarity around
    (1/16)^(1/4) = 0.5 and up; each proposal is then checked exactly, so MinHash only saves comparisons.
    Rows for which `droppable(row)` is False (e.g. a user's seed problems) are always kept.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    mh = MinHash(num_perm, band_rows, seed)
    buckets: dict[tuple, list[int]] = {}
    kept_shingles: list[set] = []
    kept_ids: list[str] = []
    kept, dropped = [], []
    for i, row in enumerate(rows):
        sh = ngrams(tokens(key(row)), n)
        bands = mh.bands(mh.signature(sh))
        candidates = sorted({j for band in bands for j in buckets.get(band, ())})
        best = max(((jaccard(sh, kept_shingles[j]), j) for j in candidates), default=(0.0, -1))
        if best[0] >= threshold and droppable(row):
            dropped.append(Dropped(row, f"near duplicate of {kept_ids[best[1]]} (jaccard {best[0]:.2f})"))
            continue
        for band in bands:
            buckets.setdefault(band, []).append(len(kept))
        kept_shingles.append(sh)
        kept_ids.append(_row_id(row, i))
        kept.append(row)
    return kept, dropped


def dedup_and_decontaminate(rows: Sequence[Any], benchmarks: Sequence[str] = (), threshold: float = 0.7,
                            index: Any = None, droppable: Callable[[Any], bool] = lambda row: True
                            ) -> tuple[list, list[dict], dict]:
    """Exact, then near (MinHash) dedup, then decontamination against `benchmarks` (specs of
    evol.decontam) or a prebuilt `index`. Returns kept rows, dropped rows as
    {id, code, detail} (codes "duplicate" and "contaminated") and the decontamination report.
    Dedup never drops a row for which `droppable(row)` is False; decontamination drops any row."""
    from evol.decontam import BenchmarkIndex, decontaminate

    kept, d1 = exact_dedup(rows, droppable=droppable)
    kept, d2 = near_dedup(kept, threshold=threshold, droppable=droppable)
    dropped = [{"id": _row_id(d.row, -1), "code": "duplicate", "detail": d.reason} for d in d1 + d2]
    report: dict = {"checked": len(kept), "removed": 0, "benchmarks": {}}
    if index is None and benchmarks:
        index = BenchmarkIndex.load(benchmarks)
    if index is not None:
        before = {_row_id(r, -1): r for r in kept}
        kept, report = decontaminate(kept, index)
        for name, b in report["benchmarks"].items():
            dropped += [{"id": m["row_id"], "code": "contaminated",
                         "detail": f"{m['rule']} overlap with {name} {m['benchmark_id']}: {m['text'][:120]!r}"}
                        for m in b["matches"] if m["row_id"] in before]
    report["exact_duplicates"], report["near_duplicates"] = len(d1), len(d2)
    return kept, dropped, report


if __name__ == "__main__":
    import argparse
    import json

    from evol.seeds import load_source

    ap = argparse.ArgumentParser(description="Dedup and decontaminate a Problem JSONL (prints a summary).")
    ap.add_argument("problems")
    ap.add_argument("--against", nargs="*", default=[], help="benchmarks, e.g. humaneval mbpp:PATH@test")
    a = ap.parse_args()
    kept, dropped, rep = dedup_and_decontaminate(load_source(a.problems), a.against)
    print(json.dumps({"kept": len(kept), "exact": rep["exact_duplicates"], "near": rep["near_duplicates"],
                      "contaminated": rep["removed"]}))
