"""Test helper run under torchrun: train one config while recording the device of every collective's tensors.

A TorchDispatchMode sees each c10d operation (eager `dist.*` calls as well as the functional collectives
that DTensor and FSDP2 issue), so nothing the trainer or the parallel stack sends can slip past it.
Each rank writes `collectives-rank{R}.json`: the trainer's device and every (operation, tensor device).
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from jijian.config import load_config
from jijian.model.device import resolve_device
from jijian.train.distributed import shutdown
from jijian.train.run import run_training

COLLECTIVE_NAMESPACES = ("c10d", "_c10d_functional")


class CollectiveSpy(TorchDispatchMode):
    """Records (operation name, device type) for every tensor handed to a collective."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace in COLLECTIVE_NAMESPACES:
            for arg in [*args, *(kwargs or {}).values()]:
                for tensor in arg if isinstance(arg, list | tuple) else [arg]:
                    if isinstance(tensor, torch.Tensor):
                        self.seen.append((str(func), tensor.device.type))
        return func(*args, **(kwargs or {}))


if __name__ == "__main__":
    config = load_config(sys.argv[1])
    out = Path(sys.argv[2])
    spy = CollectiveSpy()
    with spy:
        run_training(config)
    record = {"trainer_device": resolve_device(config.train.device, "train.device").type, "collectives": spy.seen}
    (out / f"collectives-rank{dist.get_rank()}.json").write_text(json.dumps(record), encoding="utf-8")
    shutdown()
