"""One process or many under torchrun: rank, world size, device, and the few collectives the loop needs.

With ``WORLD_SIZE`` unset (a plain ``cnnctl train``) every method is a no-op on one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


def _attempt_store(rank: int, world_size: int) -> dist.Store:
    """torchrun's store, with a key prefix of its own for each elastic restart.

    torchrun keeps one TCPStore for the whole job, so after a restart (``--max-restarts``) the process group's keys
    from the attempt that died are still there: a rank could read a dead peer's address and time out connecting to it
    (pytorch/pytorch#167288). A prefix per ``TORCHELASTIC_RESTART_COUNT`` gives every attempt clean keys.
    """
    store, _, _ = next(dist.rendezvous("env://", rank, world_size))
    return dist.PrefixStore(f"cnnctl/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto") -> DistContext:
        """Read torchrun's environment; start the process group (NCCL on CUDA, gloo on CPU) when there are several."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo", store=_attempt_store(rank, world_size),
                                    rank=rank, world_size=world_size)
        dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        return cls(rank, world_size, local_rank, dev)

    def _sum(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        if self.world_size == 1:
            return list(tensors)
        flat = torch.cat([t.reshape(-1).double() for t in tensors])
        dist.all_reduce(flat)
        out, i = [], 0
        for t in tensors:
            out.append(flat[i: i + t.numel()].reshape(t.shape).to(t.dtype))
            i += t.numel()
        return out

    def reduce_epoch(self, state: Any) -> tuple[float, float, int]:
        """The epoch's global mean training loss, accuracy and sample count."""
        if self.world_size == 1:
            return state.totals()
        sizes = state.sizes[: state.step].to(state.losses.device)
        loss_sum = (state.losses[: state.step].double() * sizes).sum()
        correct = state.correct[: state.step].sum()
        loss_sum, correct, n = self._sum(loss_sum, correct, sizes.sum())
        n_ = max(int(n), 1)
        return float(loss_sum) / n_, float(correct) / n_, int(n)

    def reduce_eval(self, acc: Any, classes: list[str]) -> dict[str, Any]:
        """An EvalAccumulator's result over all ranks' shards."""
        if self.world_size > 1:
            acc.flush()
            acc.loss_sum, acc.top5, acc.cm = self._sum(acc.loss_sum, acc.top5, acc.cm)
        return acc.result(classes)

    def broadcast_reason(self, reason: str | None) -> str | None:
        """Rank 0 decides (early stopping); every rank gets its decision so all stop together."""
        if self.world_size == 1:
            return reason
        box = [reason]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_path(self, path: str | None) -> str:
        if self.world_size == 1:
            assert path is not None
            return path
        box = [path]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self, *, finished: bool = True) -> None:
        """Leave the process group; after a clean finish, all ranks together (a barrier first), so none tears down
        its connections while a peer still uses them. After an error, at once: the peers may never arrive."""
        if self.world_size > 1 and dist.is_initialized():
            if finished:
                dist.barrier()
            dist.destroy_process_group()
