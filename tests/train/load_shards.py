"""Test helper run under torchrun: load a Hugging Face model sharded by a layout, and compare with a full load.

argv: HF_DIR OUT_DIR PARALLEL_JSON. Each rank builds its parts on the meta device, reads only its slices
through DCP's Hugging Face reader, then checks every local shard bitwise against the same slice of the
model `load_hf` reads whole, and writes `rank{R}.json` with the comparison and its peak RSS.
"""

import json
import resource
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor

from jijian.config import DeployConfig
from jijian.model.hf import load_hf
from jijian.train.distributed import init_distributed, shutdown
from jijian.train.layout import resolve_layout
from jijian.train.parallel import build_model_parts, build_parallel_dims
from jijian.train.run import model_shape

if __name__ == "__main__":
    hf_dir, out, parallel = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    compare = len(sys.argv) < 5 or sys.argv[4] != "--no-compare"
    config = DeployConfig.model_validate(
        {"model": {"hf_path": str(hf_dir)}, "train": {"device": "cpu", "seq_len": 16}, "parallel": parallel}
    )
    device = init_distributed(torch.device("cpu"), 300)
    layout = resolve_layout(config, dist.get_world_size())
    dims = build_parallel_dims(layout, "cpu")
    parts = build_model_parts(model_shape(config), config.train, dims, device, lambda a, b: a, initial_hf_dir=hf_dir)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    local_bytes = sum(
        (p.to_local() if isinstance(p, DTensor) else p).numel() * p.element_size() for p in parts.parameters()
    )
    differing, compared = [], 0
    if compare:
        full, _ = load_hf(hf_dir)
        for part in parts.parts:
            for name, param in part.named_parameters():
                reference = full.get_parameter(name).detach()
                if isinstance(param, DTensor):
                    reference = distribute_tensor(
                        reference, param.device_mesh, param.placements, src_data_rank=None
                    ).to_local()
                    param = param.to_local()
                compared += 1
                if not torch.equal(param.detach(), reference):
                    differing.append(name)
    record = {"peak_rss": peak_rss, "local_parameter_bytes": local_bytes, "compared": compared, "differing": differing}
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(record), encoding="utf-8")
    shutdown()
