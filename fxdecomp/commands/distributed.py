"""Many processes through torch.distributed: torchrun starts them, each writes its own shards."""
from __future__ import annotations

import contextlib
import os

import torch


@contextlib.contextmanager
def process_group(device: torch.device):
    """Join the process group torchrun describes (WORLD_SIZE > 1): nccl on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = torch.distributed
    if world <= 1 or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    try:
        yield
    finally:
        dist.destroy_process_group()
