"""One process, or one of several started by torchrun: rank, device, process group.

    torchrun --nproc_per_node=2 -m training.run   # DistributedDataParallel, one process per GPU

Use it as a context manager: the process group is closed however the run ends (an error or an
early return included), so no rank is left waiting on a collective call.
"""

from __future__ import annotations

import datetime as dt
import os

import torch
import torch.distributed as dist

from training.device import select_device


class Distributed:
    """torchrun's environment, or a single process when there is none."""

    def __init__(self, device_arg: str, timeout_s: float) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = select_device(device_arg)
        if device.type == "cuda" and self.world_size > 1:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        self.timeout_s = timeout_s

    def __enter__(self) -> Distributed:
        if self.world_size > 1:
            # NCCL between GPUs, gloo between CPU processes. The timeout makes a rank that died
            # or hung fail the others instead of leaving them waiting forever.
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=dt.timedelta(seconds=self.timeout_s))
        return self

    def __exit__(self, *exc_info: object) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    @property
    def is_main(self) -> bool:
        return self.rank == 0
