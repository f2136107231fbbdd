"""Sample any model on any problems, without the loop; and the public face of align.backends.

    python -m align.generate --model tiny-teacher-dir --backend hf --in problems.jsonl \\
        --out candidates.jsonl --n 4 --temperature 0.8 --template pangu
    python -m align.generate --model my-model --backend openai --base-url http://localhost:8000/v1 \\
        --no-api-key --in mbpp:mbpp.jsonl@test --out cands.jsonl --n 2 --template chat

A rerun skips problems whose n candidates are already in OUT (it appends the rest), and the
openai backend's response cache makes already-answered requests free.
Tests: `.venv/bin/python -m pytest tests/align/test_generate.py`.
"""
from __future__ import annotations

from align.backends import (BACKENDS, DEFAULT_STOP, Backend, BackendError, BackendOptionError,  # noqa: F401
                            BackendUnavailable, Prompt, SamplingParams, backend_resources, check_backend,
                            load_backend, truncate_at_stop)
from align.backends.hf import HFBackend  # noqa: F401
