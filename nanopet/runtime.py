"""Where and how a training run runs: the device, the DDP process group, memory per pass.

- ``select_device``: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a ``torch.device`` (one line on a bad name);
- ``Distribution`` / ``start_distributed``: rank and world size from torchrun or SLURM, and the process group;
- ``resolve_atoms_per_pass``: ``auto`` -> atoms per forward/backward pass on this device;
- ``keep_freed_memory``: glibc tuning that keeps CPU training from re-faulting memory every step.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import torch

from nanopet.errors import InputError

CPU_ATOMS_PER_PASS = 256


@dataclass
class Distribution:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_distributed(training: dict, device: torch.device) -> Distribution:
    """Join the process group described by torchrun (RANK/WORLD_SIZE) or SLURM (SLURM_PROCID/NTASKS)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"]))
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world, local = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    else:
        raise InputError(
            "architecture.training.distributed: true needs a process launcher; run under torchrun "
            "(torchrun --nproc-per-node N -m nanopet.cli train options.yaml) or srun"
        )
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env["MASTER_PORT"] = str(training["distributed_port"])
    if device.type == "cpu":  # oversubscribed OpenMP threads make CPU training many times slower
        local_processes = int(env.get("LOCAL_WORLD_SIZE", env.get("SLURM_NTASKS_PER_NODE", world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_processes))
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, rank=rank, world_size=world)
    return Distribution(rank, world, local)


def select_device(name: str, distribution_local_rank: int | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device: {name} requested but no CUDA device is visible; use device: cpu or auto")
        if name == "cuda" and distribution_local_rank is not None:
            name = f"cuda:{distribution_local_rank % torch.cuda.device_count()}"
    elif name != "cpu":
        raise InputError(f"device: must be auto, cpu, cuda or cuda:N, got {name!r}")
    return torch.device(name)


def resolve_atoms_per_pass(value, device: torch.device) -> int:
    """``auto``: 256 atoms per pass on CPU (peak memory halves at the default batch, speed unchanged),
    the whole batch on GPU."""
    if value == "auto":
        return CPU_ATOMS_PER_PASS if device.type == "cpu" else 2**62
    return int(value)


def keep_freed_memory() -> None:
    """Stop glibc from returning large freed blocks to the OS after every step (the biggest CPU loss
    measured on force training: each step re-faults hundreds of MB). No-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
