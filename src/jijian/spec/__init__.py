"""Facts every package shares, written once, torch-free and below the planner, the trainer and the server.

- `hardware`: the hardware catalogue (peak FLOP/s, memory, links, prices), so the trainer's MFU and the
  planner's predictions divide by the same peak;
- `shape`: model arithmetic (parameters, FLOPs per token, activation and KV-cache bytes);
- `layout`: the layout rules (what tensor and pipeline parallelism and the batch must divide).
"""

from jijian.spec.hardware import accelerator_for_device, catalogue

__all__ = ["accelerator_for_device", "catalogue"]
