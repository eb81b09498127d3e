"""Several processes (`torchrun --nproc_per_node N`, `accelerate launch`): which one this is, and
what they must agree on.

Training is data parallel through the Trainer's own DDP (accelerate): every process holds the
whole NF4 model on its own GPU, takes every N-th micro-batch, and the LoRA gradients are averaged
before each optimizer step. This module holds only what the Trainer does not: joining the process
group before the Trainer exists (the output folder and the memory probes come first), rank 0
deciding for all, and gathering what each process computed. With one process every function here
is the plain single-process case, and nothing is communicated.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def start() -> None:
    """Join the process group (NCCL on GPUs, gloo on CPU) and take this process's own GPU
    (LOCAL_RANK), through accelerate's state, which the Trainer then reuses. Console output is left
    to rank 0: N copies of every line would bury it."""
    if world_size() == 1:
        return
    import torch
    from accelerate import PartialState
    from transformers.utils import logging as hf_logging

    PartialState(cpu=not torch.cuda.is_available())
    if not is_main():
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (for the process's life)
        hf_logging.disable_progress_bar()


def stop(cleanly: bool = True) -> None:
    """Leave the process group before the interpreter ends (gloo's threads otherwise abort the
    process at exit now and then). Not `cleanly` after a lost peer: NCCL may wait for it forever."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    if cleanly and dist.is_initialized():
        dist.destroy_process_group()


def lost_peer(error: BaseException) -> bool:
    """Whether `error` is a collective broken by another process's end (killed, or stopped by its
    own error): NCCL's DistError, or gloo's RuntimeError naming the peer."""
    if world_size() == 1 or not isinstance(error, RuntimeError):
        return False
    import torch.distributed as dist

    return isinstance(error, dist.DistError) or "by peer" in str(error)


class Elsewhere(Exception):
    """An error that rank 0 raised and reports: this process leaves quietly."""


def on_main(work: Callable[[], T]) -> T:
    """`work()` on rank 0 only (writing files, claiming a folder); its result, or the error it
    raised, on every process, so that all go on, or all stop, together."""
    if world_size() == 1:
        return work()
    import torch.distributed as dist

    outcome: list = [None]
    if is_main():
        try:
            outcome = [(work(), None)]
        except BaseException as err:  # the others are told first, then it is raised here as it was
            dist.broadcast_object_list([(None, f"{type(err).__name__}: {err}")], src=0)
            raise
    dist.broadcast_object_list(outcome, src=0)
    value, error = outcome[0]
    if error is not None:
        raise Elsewhere(error)
    return value


def gather(value: T) -> list[T]:
    """Every process's `value`, in rank order, on every process."""
    if world_size() == 1:
        return [value]
    import torch.distributed as dist

    values: list = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def any_process(flag: bool) -> bool:
    """Whether `flag` is set on any process (a Ctrl-C that reached only some of them). Asked at
    every optimizer step: one all-reduce of one number, where `gather` would pickle and send twice."""
    if world_size() == 1:
        return flag
    import torch
    import torch.distributed as dist

    count = torch.tensor([int(flag)], device=torch.cuda.current_device() if torch.cuda.is_available() else "cpu")
    dist.all_reduce(count)
    return bool(count.item())


def share(count: int) -> range:
    """This process's share of `count` items: every N-th, from its rank (shares differ by at most
    one item)."""
    return range(rank(), count, world_size())
