"""Ray fan-out on CPU: placement requests (GPUs declared to a local Ray), the failure policy, and a
shard whose actor died re-run exactly once. Run: .venv/bin/python -m pytest tests/align/test_fanout.py"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from align.fanout import Progress, actor_map, check_capacity, init_ray, ray_map, start_actors
from align.generate import backend_resources

ray = pytest.importorskip("ray")
ROOT = str(Path(__file__).parents[2])


@pytest.fixture(scope="module")
def local_ray():
    """Ray on this machine with 2 CPUs and 2 declared GPUs (none exist: Ray only counts them),
    so placement by num_gpus is tested without a GPU."""
    if ray.is_initialized():   # started by an earlier test (the loop) without the declared GPUs
        ray.shutdown()
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, old]))   # workers import this checkout
    ray.init(num_cpus=2, num_gpus=2, log_to_driver=False, include_dashboard=False)
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = old


def test_progress_logs_done_total_and_rate():
    lines = []
    p = Progress(10, "sample", "problems", lines.append, every_s=0)
    p.update(4)
    p.update(6)
    assert lines[0].startswith("sample: 4/10 problems (") and "/s, eta " in lines[0]
    assert lines[-1].startswith("sample: 10/10 problems (") and "eta" not in lines[-1]


def test_more_replicas_than_the_cluster_holds_is_an_error_not_a_hang():
    cluster = {"CPU": 16.0, "GPU": 8.0}
    vllm_tp2 = backend_resources("vllm", {"tensor_parallel_size": 2})
    check_capacity("4 x Sampler", 4, vllm_tp2, cluster)                       # 8 GPUs: fits exactly
    with pytest.raises(ValueError, match=r"need 2 GPU each, 10 in all, but the Ray cluster has 8"):
        check_capacity("5 x Sampler", 5, vllm_tp2, cluster)
    with pytest.raises(ValueError, match=r"need 1 CPU each, 17 in all"):
        check_capacity("17 x Sampler", 17, {"num_cpus": 1}, cluster)
    check_capacity("3 x Sampler", 3, {"num_cpus": 0.5}, {"CPU": 2.0})


@pytest.mark.slow
def test_start_actors_refuses_what_the_local_cluster_cannot_place(local_ray):
    class Probe:
        pass
    with pytest.raises(ValueError, match=r"3 x Probe need 2 GPU each, 6 in all, but the Ray cluster has 2"):
        start_actors(Probe, (), 3, {"num_cpus": 0.5, "num_gpus": 2})


@pytest.mark.slow
def test_actors_get_the_gpus_their_backend_asks_for(local_ray):
    class Probe:
        def gpus(self, _shard):
            return [len(ray.get_gpu_ids()), os.environ.get("CUDA_VISIBLE_DEVICES")]

    res = backend_resources("vllm", {"tensor_parallel_size": 2})
    assert res == {"num_cpus": 1, "num_gpus": 2}
    (actor,) = start_actors(Probe, (), 1, res)
    n, visible = ray.get(actor.gpus.remote([]))
    assert n == 2 and sorted(visible.split(",")) == ["0", "1"]      # Ray placed it on both GPUs
    ray.kill(actor)
    (cpu_actor,) = start_actors(Probe, (), 1, backend_resources("hf", {"device": "cpu"}))
    n, visible = ray.get(cpu_actor.gpus.remote([]))
    assert n == 0 and not visible                                     # a CPU backend is given no GPU
    ray.kill(cpu_actor)


@pytest.mark.slow
def test_a_shard_whose_actor_died_is_rerun_once(local_ray, tmp_path):
    class Worker:
        """Dies (the whole process) the first time it meets the shard holding "die"."""
        def __init__(self, marker: str):
            self.marker = Path(marker)

        def work(self, shard):
            if "die" in shard and not self.marker.exists():
                self.marker.touch()
                os._exit(1)
            return [f"{x}!" for x in shard]

    shards = [["a", "b"], ["c", "die"], ["d"], ["e", "f"], ["g"]]
    want = {i: [f"{x}!" for x in s] for i, s in enumerate(shards)}
    # No restarts: the dead actor is gone and its shard goes to the other one.
    actors = start_actors(Worker, (str(tmp_path / "m1"),), 2, {"num_cpus": 0.5}, max_restarts=0, max_task_retries=0)
    lines = []
    got = list(actor_map(actors, "work", shards, Progress(8, "sample", "problems", lines.append, every_s=0)))
    assert sorted(i for i, _ in got) == list(range(len(shards)))      # each shard once: none lost, none twice
    assert dict(got) == want and (tmp_path / "m1").exists()
    assert lines[-1].startswith("sample: 8/8 problems")
    # With restarts: Ray restarts the actor and retries the call in flight itself.
    (one,) = start_actors(Worker, (str(tmp_path / "m2"),), 1, {"num_cpus": 0.5}, max_restarts=1, max_task_retries=1)
    assert dict(actor_map([one], "work", shards)) == want and (tmp_path / "m2").exists()
    # Every actor dead and no restarts left: an error, not a silent loss.
    (gone,) = start_actors(Worker, (str(tmp_path / "m3"),), 1, {"num_cpus": 0.5}, max_restarts=0)
    with pytest.raises(RuntimeError, match="every actor died"):
        list(actor_map([gone], "work", shards))


@pytest.mark.slow
def test_ray_map_reruns_a_task_whose_worker_died(local_ray, tmp_path):
    marker = str(tmp_path / "died")

    def work(shard):
        if "die" in shard and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return [x.upper() for x in shard]

    got = dict(ray_map(work, [["a"], ["die", "b"], ["c"]], num_cpus=0.5))
    assert got == {0: ["A"], 1: ["DIE", "B"], 2: ["C"]} and os.path.exists(marker)
