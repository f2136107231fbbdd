"""What each rank runs: one training job from a JSON spec (see align/train/distributed.py).

    torchrun --standalone --nproc_per_node 2 -m align.train.worker --spec spec.json
    deepspeed --num_gpus 8 --module align.train.worker --spec spec.json
"""
from __future__ import annotations

import argparse
import json
import os


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="run one training job on this rank")
    ap.add_argument("--spec", required=True, help="job spec JSON (align.train.distributed.JobSpec)")
    # The `deepspeed` launcher appends --local_rank=N; torchrun sets LOCAL_RANK instead.
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))

    from align.train.distributed import JobSpec, run_job

    metrics = run_job(JobSpec.from_json(args.spec))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(metrics, indent=1))


def _leave_together() -> None:
    """Every rank waits for the others (rank 0 may still be merging a LoRA adapter), closes the process
    group, and leaves without the interpreter's teardown.

    DeepSpeed's engine keeps its Gloo groups alive past `destroy_process_group`, and a Gloo thread freed
    during interpreter finalisation aborts the process ("terminate called without an active exception",
    SIGABRT; pytorch/pytorch#179291 describes the mechanism). torchrun then fails the whole job although
    every output was already written. Seen on rank 1 in about one run in five on a loaded 2-core box.
    """
    import sys

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
    _leave_together()
