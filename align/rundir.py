"""Run directories and resumable stages (DESIGN.md §4).

`runs/<name>/` holds `config.yaml`, one artifact per stage, and `stages/<stage>.json`
manifests recording the fingerprint (hash of the stage's config and of its input files) of
the work that produced each artifact. A stage whose manifest matches is skipped. Sharded
stages write `<stage>.shards/shard-NNNNN.jsonl` atomically, so a killed run loses at most the
shard in flight; the stage's artifact is assembled from the shards at the end.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from rank.records import content_id, read_jsonl, write_atomic, write_jsonl


def file_hash(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (names and contents), 16 hex digits."""
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for q in files:
        h.update(str(q.relative_to(p) if p.is_dir() else q.name).encode())
        with open(q, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


@dataclass
class StageResult:
    name: str
    skipped: bool
    seconds: float
    stats: dict = field(default_factory=dict)


class RunDir:
    """A run directory; `stage(...)` runs a step unless a matching finished one is on disk."""

    def __init__(self, root: str | Path, log: Callable[[str], None] = print):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.results: list[StageResult] = []

    def path(self, name: str) -> Path:
        return self.root / name

    def _manifest(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def fingerprint(self, config: Any, inputs: Sequence[str | Path]) -> str:
        return content_id(config, [file_hash(p) for p in inputs])

    def stage(self, name: str, *, config: Any, inputs: Sequence[str | Path], outputs: Sequence[str],
              fn: Callable[[], dict]) -> StageResult:
        """Run `fn` (which writes `outputs` under the run dir and returns stats) unless a
        manifest with the same fingerprint exists and every output is present."""
        fp = self.fingerprint(config, inputs)
        man = self._manifest(name)
        if man.exists():
            old = json.loads(man.read_text())
            if old.get("fingerprint") == fp and all((self.root / o).exists() for o in outputs):
                self.log(f"[{name}] skipped: finished earlier with the same inputs and config")
                # A skipped stage reports the time it took when it ran, so reports stay comparable.
                res = StageResult(name, True, old.get("seconds", 0.0), old.get("stats", {}))
                self.results.append(res)
                return res
        self.log(f"[{name}] running")
        t0 = time.time()
        stats = fn() or {}
        res = StageResult(name, False, time.time() - t0, stats)
        write_atomic(man, json.dumps({"fingerprint": fp, "outputs": list(outputs), "stats": stats,
                                           "seconds": res.seconds, "finished": time.time()}, indent=1))
        self.log(f"[{name}] done in {res.seconds:.1f}s {stats}")
        self.results.append(res)
        return res

    def sharded(self, name: str, items: list, shard_size: int, fn: Callable[[list], list],
                fingerprint: str, executor: "Callable[[Callable, list[list]], Iterable[tuple[int, list]]] | None" = None
                ) -> list[dict]:
        """Map `fn` over shards of `items`; each finished shard is written atomically to
        `<name>.shards/<fingerprint>/shard-NNNNN.jsonl` as soon as it completes, and shards already
        on disk are reused. `executor(fn, shards)` yields (index, rows) in any order (Ray fan-out);
        the default runs the shards one by one here."""
        folder = self.root / f"{name}.shards" / fingerprint
        folder.mkdir(parents=True, exist_ok=True)
        size = max(1, shard_size)
        shards = [items[i:i + size] for i in range(0, len(items), size)]
        path = lambda i: folder / f"shard-{i:05d}.jsonl"  # noqa: E731
        pending = [i for i in range(len(shards)) if not path(i).exists()]
        if len(pending) < len(shards):
            self.log(f"[{name}] reused {len(shards) - len(pending)} finished shard(s) of {len(shards)}")
        run = executor or (lambda f, ss: ((j, f(s)) for j, s in enumerate(ss)))
        for j, rows in run(fn, [shards[i] for i in pending]):
            write_jsonl(path(pending[j]), rows)
        return [r for i in range(len(shards)) for r in read_jsonl(path(i))]
