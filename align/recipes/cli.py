"""Command-line handling shared by the loop recipes: presets, overrides, --dry-run."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from align.config_loader import ConfigError, load
from align.recipes.loop_config import RunConfig
from rank.plugins import suggest

RECIPES = Path(os.environ.get("RRTF_RECIPES", Path(__file__).resolve().parents[2] / "recipes"))


def bases() -> list[str]:
    # recipes/_shared holds layers the presets include (`defaults:`), not a base.
    return sorted(p.name for p in RECIPES.iterdir() if p.is_dir() and not p.name.startswith("_")) \
        if RECIPES.is_dir() else []


def preset_path(base: str, method: str) -> Path:
    path = RECIPES / base / f"{method}.yaml"
    if not path.exists():
        known = [b for b in bases() if (RECIPES / b / f"{method}.yaml").exists()]
        raise ConfigError(f"no preset {path} for --base {base!r}{suggest(base, known)}; "
                          f"bases with a {method} preset: {', '.join(known) or 'none'}")
    return path


def parser(method: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m align.recipes.{method}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Overrides: any config field as section.key=value, e.g.\n"
                                       "  train.args.learning_rate=1e-5 models.student.sample.n=8 models.teachers.0.sample.n=2\n"
                                       f"Presets: {RECIPES}/<base>/{method}.yaml")
    p.add_argument("--base", default="tiny", help="model family preset (default: tiny, the embedded CPU loop)")
    p.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="extra YAML layered over the preset (repeatable)")
    p.add_argument("--run-dir", default=None, help="run directory (default: runs/<name>)")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join ('auto' on a cluster)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan and a per-GPU memory estimate; load no weights")
    p.add_argument("--push-to-hub", default=None, metavar="REPO",
                   help="upload the run's datasets (datasets/*) to Hub dataset repos REPO-<name>, or copy "
                        "them to a local folder REPO/<name>")
    p.add_argument("--stand-in", action="store_true",
                   help="run the preset on CPU with small random-init models of the same classes (align.standin)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    return p


def load_config(method: str, args: argparse.Namespace) -> RunConfig:
    files = [preset_path(args.base, method), *args.config]
    overrides = list(args.overrides)
    if args.ray_address:
        overrides.append(f"ray_address={args.ray_address}")
    cfg = load(RunConfig, files, overrides)
    check_names(cfg)
    check_passthrough(cfg)
    return cfg


def check_names(cfg: RunConfig) -> None:
    """Resolve every table name and `package.module:name` plugin now, so a typo fails at load,
    not after sampling: models, backends (and their options), templates, ranking strategy,
    evolution operators. Raises ConfigError naming the field."""
    from align import generate
    from align.models import check_ref
    from align.templates import get_template
    from evol.evolve import resolve_operator
    from rank.plugins import UnknownNameError
    from rank.strategies import get_strategy

    checks = []
    for where, spec in [("models.student", cfg.models.student),
                        *((f"models.teachers[{i}]", t) for i, t in enumerate(cfg.models.teachers))]:
        checks.append((f"{where}.template", get_template, spec.template))
        if spec.backend != "openai":   # an API's model name is the server's to check, not ours
            checks.append((f"{where}.ref", check_ref, spec.ref))
        # validates names and options without importing the backend's library
        checks.append((f"{where}.backend", lambda s: generate.check_backend(s.backend, s.options), spec))
    from align.datagen import evolve_spec
    from evol.llm_evolve import FRAMINGS

    if cfg.evolve.framing not in FRAMINGS:
        raise ConfigError(f"evolve.framing: unknown framing {cfg.evolve.framing!r}"
                          f"{suggest(cfg.evolve.framing, FRAMINGS)}; known: {', '.join(FRAMINGS)}")
    try:
        evolver = evolve_spec(cfg)      # evolve.model names one of the run's entries, or is one of its own
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if evolver is not None and evolver is cfg.evolve.model:
        checks += [("evolve.model.ref", check_ref, evolver.ref),
                   ("evolve.model.template", get_template, evolver.template),
                   ("evolve.model.backend", lambda s: generate.check_backend(s.backend, s.options), evolver)]
    checks.append(("rank.strategy", get_strategy, cfg.rank.strategy))
    checks.append(("train.num_workers", lambda t: _check_world(t), cfg.train))
    checks += [("evolve.operators", resolve_operator, op) for op in cfg.evolve.operators or []]
    for where, fn, arg in checks:
        try:
            fn(arg)
        except (UnknownNameError, ValueError, TypeError) as e:
            raise ConfigError(f"{where}: {e}") from None


def _check_world(t) -> None:
    """The plan's global batch and the launch's worker count come from one number (num_workers): with
    GPUs, one worker per GPU, so a worker count that disagrees with the GPUs is refused."""
    gpus = t.num_gpus_per_node * t.num_nodes
    if t.launcher == "inprocess" and t.num_workers != 1:
        raise ValueError(f"launcher inprocess runs 1 worker, not {t.num_workers}; use torchrun or ray")
    if gpus and t.launcher != "inprocess" and t.num_workers != gpus:
        raise ValueError(f"{t.num_workers} workers but num_gpus_per_node x num_nodes = {gpus} GPUs: "
                         "training uses one GPU per worker, so the two must be equal")


def check_passthrough(cfg: RunConfig) -> None:
    """Check mappings handed to other libraries' dataclasses before anything loads."""
    from align.config_loader import check_keys
    from rank.strategies import get_strategy

    for name in [cfg.rank.strategy, *cfg.rank.strategies]:
        get_strategy(name)
    if cfg.tiny:
        from align.tiny import TinyConfig
        check_keys(TinyConfig, cfg.tiny, "tiny")
    from align.train.config import check_train
    try:
        check_train(cfg.train, cfg.method)
    except ValueError as e:
        raise ConfigError(str(e)) from None
