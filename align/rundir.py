"""Run directories and resumable stages (docs/design.md §4).

`runs/<name>/` holds `config.yaml`, one artifact per stage, and `stages/<stage>.json`
manifests recording the fingerprint (hash of the stage's config and of its input files) of
the work that produced each artifact. A stage whose manifest matches is skipped. Sharded
stages write `<stage>.shards/shard-NNNNN.jsonl` atomically, so a killed run loses at most the
shard in flight; the stage's artifact is assembled from the shards at the end, and the shard
folders of earlier fingerprints are then removed. The eval stage fingerprints a trained model
by its final files (`RunDir.model_fingerprint`), not by the checkpoints beside them.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from rank.records import content_id, read_jsonl, write_atomic, write_jsonl


def file_hash(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (names and contents), 16 hex digits."""
    p = Path(path)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    return content_id([(str(q.relative_to(p) if p.is_dir() else q.name), _stream_hash(q)) for q in files])


# Files a training run writes beside the model that do not change what the model computes.
_NOT_MODEL = {"metrics.json", "job.json", "training_args.bin", "trainer_state.json", "README.md",
              "tiny_build.json", "log_history.jsonl", "job-fingerprint.json"}


def _stream_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_files(path: str | Path) -> list[Path]:
    """The files that make up the model saved in directory `path`: its top-level weights, config and
    tokenizer; not `checkpoint-*/` (or any other sub-folder, e.g. TensorBoard's `runs/`), nor the
    run's own metrics and job spec beside them."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: not a model directory")
    files = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".") and q.name not in _NOT_MODEL)
    if not any(q.suffix in (".safetensors", ".bin", ".pt", ".pth", ".gguf") for q in files):
        raise FileNotFoundError(f"{p}: no weights (*.safetensors, *.bin, ...) at the top level")
    return files


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

    def model_fingerprint(self, path: str | Path) -> str:
        """Content hash of the model saved in directory `path` (its final weights, config and tokenizer:
        `model_files`), for the eval stage's config. Each file's sha256 is cached in
        `cache/file-hashes.json` under (path, size, mtime), so a rerun reads no weights unless they changed:
        at 15B that saves reading tens of GB (and hundreds with the checkpoints) on every rerun."""
        cache_path = self.root / "cache" / "file-hashes.json"
        cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
        parts, changed = [], False
        for q in model_files(path):
            st = q.stat()
            key, stamp = str(q.resolve()), [st.st_size, st.st_mtime_ns]
            if cache.get(key, {}).get("stamp") != stamp:
                cache[key] = {"stamp": stamp, "sha256": _stream_hash(q)}
                changed = True
            parts.append((q.name, cache[key]["sha256"]))
        if changed:
            write_atomic(cache_path, json.dumps(cache, indent=1))
        return content_id("model", parts)

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
        out = [r for i in range(len(shards)) for r in read_jsonl(path(i))]
        self._drop_stale_shards(folder)
        return out

    def _drop_stale_shards(self, current: Path) -> None:
        """Remove the shard folders of earlier fingerprints beside `current` (config or inputs changed, so
        they can never be reused); called once every current shard is on disk."""
        for old in current.parent.iterdir():
            if old != current and old.is_dir():
                size = sum(q.stat().st_size for q in old.rglob("*") if q.is_file())
                shutil.rmtree(old)
                self.log(f"[{current.parent.name}] removed stale shards {old.name} ({size / 1e6:.1f} MB)")
