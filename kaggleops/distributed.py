"""Data-parallel training with torch's own DistributedDataParallel, launched by ``torchrun``.

``torchrun --standalone --nproc_per_node 2 -m kaggleops train …`` (or ``kops train --nproc 2``, which runs that
for you) starts one process per GPU; torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``. Backend: NCCL on
CUDA, gloo on CPU. Rank 0 is the only one that talks to MLflow; the others train their shard and wait.
Single machine only (the ranks share rank 0's temporary folders, e.g. a downloaded checkpoint).

Without those variables (a plain ``kops train``) every helper answers as the one and only process.
torch is imported inside the functions that need it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

ENV_RANK = "RANK"
ENV_LOCAL_RANK = "LOCAL_RANK"
ENV_WORLD_SIZE = "WORLD_SIZE"
TIMEOUT = timedelta(minutes=30)  # rank 0 validates/uploads while the others wait at a barrier


def world_size() -> int:
    """Processes in the job (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get(ENV_WORLD_SIZE, "1"))


def rank() -> int:
    """This process's global rank (``RANK``; 0 without torchrun)."""
    return int(os.environ.get(ENV_RANK, "0"))


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``): the index of the GPU it uses."""
    return int(os.environ.get(ENV_LOCAL_RANK, "0"))


def is_main() -> bool:
    """Whether this process logs, checkpoints and validates (rank 0, or the only process)."""
    return rank() == 0


def active() -> bool:
    """Whether a process group of more than one process is up."""
    import torch.distributed as dist

    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def init() -> bool:
    """Join the process group torchrun prepared (NCCL with CUDA, else gloo); False (nothing done) when not
    launched with more than one process or when already joined."""
    import torch
    import torch.distributed as dist

    if world_size() <= 1 or dist.is_initialized():
        return False
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return True


def destroy(together: bool = False) -> None:
    """Leave the process group (when one is up). ``together`` (the success path) first waits for every rank:
    a rank that tears its gloo connections down while a peer still uses them can make that peer abort
    ("terminate called without an active exception", seen once under heavy load). On a failure path no rank
    waits, since a peer may be stuck in another collective."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def device(requested: Any = None) -> Any:
    """The device of this rank: ``cuda:LOCAL_RANK`` when CUDA is used in a multi-process job, else ``requested``
    resolved as usual (``auto`` → CUDA when available, else CPU)."""
    import torch

    if requested is None or requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(requested)
    if dev.type == "cuda" and world_size() > 1:
        return torch.device("cuda", local_rank())
    return dev


def wrap(model: Any, dev: Any, seed: int, step: int) -> Any | None:
    """Under torchrun: ``model`` in DistributedDataParallel (its construction copies rank 0's weights to every
    rank), and a dropout RNG of this rank's own (a restored checkpoint's RNG is rank 0's); None otherwise."""
    if not active():
        return None
    import torch
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    torch.manual_seed(seed * 7919 + rank() * 104729 + step)
    return ddp


def barrier() -> None:
    """Wait for every rank (no-op with one process)."""
    if active():
        import torch.distributed as dist

        dist.barrier()


def broadcast(obj: Any = None) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable object; no-op with one process)."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(value: float, dev: Any) -> float:
    """The sum of ``value`` over the ranks (``value`` itself with one process)."""
    if not active():
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return float(t.item())


def shard(rows: list[int]) -> tuple[list[int], float]:
    """This rank's part of a global batch ``rows`` (every ``world``-th row, so lengths stay balanced) and its
    weight: the share of the batch's rows it holds × world size (DDP averages gradients over the ranks, so the
    result is the gradient of the mean over the whole batch even when shards differ in size). A rank left
    without a row gets one with weight 0: every rank must run forward/backward for the all-reduce."""
    world = world_size()
    if world <= 1:
        return rows, 1.0
    mine = rows[rank()::world]
    if not mine:
        return rows[:1], 0.0
    return mine, len(mine) * world / len(rows)


def launch_command(nproc: int, args: list[str]) -> list[str]:
    """``python -m kaggleops.distributed --standalone --nproc_per_node N -m kaggleops ARGS``: torchrun (see
    :func:`torchrun`)."""
    return [sys.executable, "-m", "kaggleops.distributed", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "kaggleops", *args]


def torchrun(argv: list[str]) -> int:
    """torchrun on ``argv`` (``torch.distributed.run``'s own arguments); returns the exit code.

    A failed worker has printed its own one-line error: instead of torchrun's traceback and failure table this
    adds one line naming the rank and its exit code, and returns that code (1 for a worker killed by a signal,
    130 when the launcher itself was interrupted), never 0.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        failed_rank, failure = e.get_first_failure()
        code = failure.exitcode
        print(f"kops: error: training process rank {failed_rank} exited with code {code} (its messages are above).",
              file=sys.stderr)
        return code if 0 < code < 256 else 1
    except (KeyboardInterrupt, SignalException):
        return 130
    return 0


def without_nproc(args: list[str]) -> list[str]:
    """``args`` without ``--nproc N`` / ``--nproc=N`` (what each torchrun worker gets)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def launch(nproc: int, args: list[str]) -> int:
    """Run ``kops ARGS`` (``--nproc`` left out) in ``nproc`` processes under torchrun; returns its exit code.

    Example:
        >>> launch(2, ["train", "--nproc", "2", "--fold", "0"])  # doctest: +SKIP
        0
    """
    args = without_nproc(args)
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    proc = subprocess.Popen(launch_command(nproc, args), env=env)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:  # the launcher and its workers got the same Ctrl-C: their exit code tells
            continue


if __name__ == "__main__":
    sys.exit(torchrun(sys.argv[1:]))
