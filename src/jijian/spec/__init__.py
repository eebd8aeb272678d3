"""Facts every package shares, written once: the hardware catalogue (peak FLOP/s, memory, links, prices).

Torch-free and below the planner, the trainer and the server, so the trainer's MFU and the planner's
predictions divide by the same peak.
"""

from jijian.spec.hardware import accelerator_for_device, catalogue

__all__ = ["accelerator_for_device", "catalogue"]
