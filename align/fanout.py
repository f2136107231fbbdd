"""Ray fan-out for the embarrassingly parallel stages (DESIGN.md §5).

Locally this starts Ray on this machine (`ray.init()`); on a cluster pass `--ray-address auto`.
Nothing here assumes one machine: work is shipped as plain data to tasks and actors.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
    if address:
        kwargs["address"] = address
    elif num_cpus:
        kwargs["num_cpus"] = num_cpus
    ray.init(**kwargs)


def _apply(fn: Callable[[list], list], shard: list) -> list:
    return fn(shard)


def ray_map(fn: Callable[[list], list], shards: list[list], num_cpus: float = 1) -> Iterator[tuple[int, list]]:
    """Run `fn` on each shard as a Ray task; yield (index, result) as each one finishes."""
    import ray

    remote = ray.remote(num_cpus=num_cpus)(_apply)   # fn may be a partial, which ray.remote refuses
    refs = {remote.remote(fn, s): i for i, s in enumerate(shards)}
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        for r in done:
            yield refs.pop(r), ray.get(r)


def actor_map(actors: list, method: str, shards: list[list]) -> Iterator[tuple[int, list]]:
    """Round-robin shards over Ray actors calling `actor.<method>(shard)`; yield as finished."""
    import ray

    refs = {getattr(actors[i % len(actors)], method).remote(s): i for i, s in enumerate(shards)}
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        for r in done:
            yield refs.pop(r), ray.get(r)


def serial_map(fn: Callable[[list], list], shards: Iterable[list]) -> Iterator[tuple[int, list]]:
    for i, s in enumerate(shards):
        yield i, fn(s)
