"""Collective-communication costs (ring model) and pipeline bubbles.

Ring algorithms (as NCCL uses for large messages): an all-reduce of S bytes over n ranks sends
2*(n-1)/n*S bytes per rank, an all-gather or reduce-scatter (n-1)/n*S, each over the slowest link in
the ring. A ring that crosses nodes runs at the per-device NIC bandwidth; one inside a node at the
NVLink-class link bandwidth. Latency terms are ignored: the messages planned here are megabytes or more.
"""

from __future__ import annotations


def all_reduce_bytes(size: float, ranks: int) -> float:
    """Bytes each rank sends in a ring all-reduce of `size` bytes."""
    return 0.0 if ranks <= 1 else 2.0 * (ranks - 1) / ranks * size


def all_gather_bytes(size: float, ranks: int) -> float:
    """Bytes each rank sends in a ring all-gather (or reduce-scatter) whose full result is `size` bytes."""
    return 0.0 if ranks <= 1 else (ranks - 1) / ranks * size


def transfer_time(sent_bytes: float, bandwidth_gbs: float, efficiency: float) -> float:
    """Seconds to send `sent_bytes` at `efficiency` of a one-direction bandwidth in GB/s."""
    return sent_bytes / (bandwidth_gbs * 1e9 * efficiency) if sent_bytes else 0.0


def group_is_intra_node(stride: int, size: int, devices_per_node: int) -> bool:
    """Whether a group of `size` ranks spaced `stride` apart (tp innermost) stays inside one node."""
    return size <= 1 or stride * size <= devices_per_node


def bubble_fraction(schedule: str, stages: int, microbatches: int, chunks: int = 2) -> float:
    """Idle pipeline time relative to the useful compute: (p-1)/m, or (p-1)/(v*m) interleaved with v chunks."""
    if stages <= 1:
        return 0.0
    if schedule == "interleaved_1f1b":
        return (stages - 1) / (chunks * microbatches)
    return (stages - 1) / microbatches


def pipeline_in_flight(schedule: str, stages: int, microbatches: int, chunks: int = 2) -> float:
    """Micro-batches whose activations the first stage holds at its peak (as a multiple of its own layers)."""
    if stages <= 1:
        return 1.0
    if schedule == "gpipe":
        return float(microbatches)
    in_flight = float(min(stages, microbatches))
    if schedule == "interleaved_1f1b":  # Narayanan et al. 2021: the first stage warms up with extra chunks
        in_flight *= 1.0 + (stages - 1) / (stages * chunks)
    return in_flight
