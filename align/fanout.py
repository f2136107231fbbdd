"""Ray fan-out for the embarrassingly parallel stages (sampling, execution) with a failure policy.

    init_ray(address)                                          # local Ray, or "auto" on a cluster
    actors = start_actors(Sampler, args, 2, backend_resources("vllm", {"tensor_parallel_size": 2}))
    for i, rows in actor_map(actors, "sample", shards, Progress(len(problems), "sample")): ...
    for i, rows in ray_map(fn, shards, num_cpus=2, progress=Progress(n, "execute")): ...

Actors restart after their process dies (`max_restarts`) and Ray retries the call in flight on the
restarted actor (`max_task_retries`); a shard whose actor is gone for good is re-run on another
actor. Tasks are re-run when their worker dies (`max_retries`). Each shard is yielded exactly once.
Nothing here assumes one machine: work is shipped as plain data to tasks and actors.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Iterator


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


def gpus_available() -> bool:
    """Whether the Ray cluster has any GPU (decides where an hf backend with device "auto" runs)."""
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


class Progress:
    """Logs `label: done/total unit (rate/s, eta)` at most every `every_s` seconds and at the end."""

    def __init__(self, total: int, label: str, unit: str = "items", log: Callable[[str], None] = print,
                 every_s: float = 10.0):
        self.total, self.label, self.unit, self.log, self.every_s = total, label, unit, log, every_s
        self.done, self.t0, self.last = 0, time.monotonic(), 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = f", eta {(self.total - self.done) / rate:.0f}s" if 0 < rate and self.done < self.total else ""
            self.log(f"{self.label}: {self.done}/{self.total} {self.unit} ({rate:.2f}/s{eta})")


def start_actors(cls: type, args: tuple, count: int, resources: dict[str, float], *,
                 max_restarts: int = 2, max_task_retries: int = 2) -> list:
    """`count` Ray actors of `cls(*args)`, each asking for `resources` (num_cpus, num_gpus: Ray then
    sets CUDA_VISIBLE_DEVICES for it) and restarted when its process dies.

    More actors than the whole cluster can hold is a ValueError here: Ray would keep the extra ones
    pending, and a shard given to one of them would never finish (actor_map waits on every shard).
    The check reads the cluster's current size, so an autoscaling cluster must be scaled up first.
    """
    import ray

    check_capacity(f"{count} x {cls.__name__}", count, resources, ray.cluster_resources())
    remote = ray.remote(cls).options(**resources, max_restarts=max_restarts, max_task_retries=max_task_retries)
    return [remote.remote(*args) for _ in range(count)]


def check_capacity(what: str, count: int, resources: dict[str, Any], cluster: dict[str, float]) -> None:
    """ValueError when `count` actors asking for `resources` each (Ray's num_cpus, num_gpus, resources)
    cannot all be placed at once on a cluster of `cluster` totals (ray.cluster_resources())."""
    need = {"CPU": resources.get("num_cpus", 1), "GPU": resources.get("num_gpus", 0),
            **(resources.get("resources") or {})}
    for name, each in need.items():
        have = cluster.get(name, 0.0)
        if each and each * count > have:
            raise ValueError(f"{what} need {each:g} {name} each, {each * count:g} in all, but the Ray cluster has "
                             f"{have:g}: the rest would wait forever. Ask for fewer replicas (models.<entry>."
                             f"replicas) or fewer GPUs per replica, or add nodes to the cluster")


def _apply(fn: Callable[[list], list], shard: list) -> list:
    return fn(shard)


def ray_map(fn: Callable[[list], list], shards: list[list], num_cpus: float = 1, *, max_retries: int = 3,
            progress: Progress | None = None) -> Iterator[tuple[int, list]]:
    """Run `fn` on each shard as a Ray task; yield (index, result) as each one finishes. A task whose
    worker process died is re-run up to `max_retries` times (an exception raised by `fn` is not)."""
    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=max_retries)(_apply)   # fn may be a partial
    refs = {remote.remote(fn, s): i for i, s in enumerate(shards)}
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        for r in done:
            i = refs.pop(r)
            result = ray.get(r)
            if progress:
                progress.update(len(shards[i]))
            yield i, result


def actor_map(actors: list, method: str, shards: list[list], progress: Progress | None = None, *,
              max_attempts: int = 3) -> Iterator[tuple[int, list]]:
    """Call `actor.<method>(shard)` with one shard in flight per actor; yield (index, result) as each
    finishes. A shard whose actor died (after Ray's own restarts and retries) is re-run on another
    live actor, at most `max_attempts` times in all; each index is yielded exactly once."""
    import ray
    from ray.exceptions import RayActorError

    todo, idle, alive = deque(range(len(shards))), list(actors), list(actors)
    attempts = [0] * len(shards)
    inflight: dict[Any, tuple[int, Any]] = {}
    while todo or inflight:
        while todo and idle:
            i, actor = todo.popleft(), idle.pop()
            attempts[i] += 1
            inflight[getattr(actor, method).remote(shards[i])] = (i, actor)
        done, _ = ray.wait(list(inflight), num_returns=1)
        for ref in done:
            i, actor = inflight.pop(ref)
            try:
                result = ray.get(ref)
            except RayActorError as e:   # the actor is gone: drop it, give its shard to another
                if attempts[i] >= max_attempts:
                    raise RuntimeError(f"shard {i} failed {attempts[i]} times: its actor died each time ({e})") from e
                alive.remove(actor)
                if not alive:
                    raise RuntimeError(f"every actor died; {len(todo) + len(inflight) + 1} shards not done") from e
                todo.appendleft(i)
                continue
            idle.append(actor)
            if progress:
                progress.update(len(shards[i]))
            yield i, result

