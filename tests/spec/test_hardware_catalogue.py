"""One hardware catalogue: the trainer's MFU divides by the planner's peak for every device the driver names."""

from __future__ import annotations

import pytest

from jijian.plan import get_accelerator
from jijian.spec import accelerator_for_device
from jijian.train.flops import catalogue_peak_flops


@pytest.mark.parametrize(
    ("driver_name", "accelerator"),
    [
        ("NVIDIA H100 80GB HBM3", "H100-SXM"),
        ("NVIDIA H100 PCIe", "H100-PCIe"),  # 756 TF/s, not the SXM card's 989
        ("NVIDIA H200", "H200"),
        ("NVIDIA H20", "H20"),  # a substring of "H200": the longest name must win
        ("NVIDIA H800", "H800"),
        ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
        ("NVIDIA A100 80GB PCIe", "A100-80GB"),
        ("NVIDIA A800-SXM4-80GB", "A800"),
        ("AMD Instinct MI300X", "MI300X"),
    ],
)
def test_driver_names_map_to_the_catalogue_and_the_trainer_uses_its_peak(driver_name, accelerator):
    assert accelerator_for_device(driver_name) == accelerator
    peak, source = catalogue_peak_flops(driver_name)
    assert peak == get_accelerator(accelerator).bf16_tflops * 1e12
    assert accelerator in source


def test_an_unknown_device_is_not_guessed():
    assert accelerator_for_device("NVIDIA GeForce RTX 4090") is None
    assert catalogue_peak_flops("NVIDIA GeForce RTX 4090") is None
