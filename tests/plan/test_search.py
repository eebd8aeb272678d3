"""Layout search, single-layout evaluation, impossible requests and the emitted [parallel] section."""

from __future__ import annotations

import pytest

from jijian.config import ModelConfig, ParallelConfig
from jijian.plan import PlanError, Workload, evaluate_layout, make_cluster, parallel_section, parse_layout, search
from jijian.plan.search import parse_count
from jijian.spec.shape import ModelShape


def shape(preset: str) -> ModelShape:
    return ModelShape.from_config(ModelConfig(preset=preset))


def test_search_returns_fitting_layouts_fastest_first():
    work = Workload(shape("llama3-70b"), 4096, 1024, 2e12)
    cluster = make_cluster("H800")
    result = search(work, cluster, 1024, top=5)
    assert result.evaluated > 1000 and 0 < result.feasible <= result.evaluated
    speeds = [e.tokens_per_s for e in result.best]
    assert speeds == sorted(speeds, reverse=True)
    usable = cluster.accelerator.memory_gb * cluster.calibration.usable_memory_fraction
    for e in result.best:
        assert e.gpus == 1024 and e.fits and e.memory_per_device_gb <= usable
        assert e.layout.tp <= 8  # tensor parallelism stays inside a node


def test_fixed_recompute_policy_is_respected():
    work = Workload(shape("llama3-8b"), 4096, 256, 1e11)
    result = search(work, make_cluster("A100-80GB"), 64, recompute="full")
    assert {e.layout.recompute for e in result.best} == {"full"}


def test_model_that_fits_nowhere_names_the_nearest_feasible_request():
    work = Workload(shape("llama3-405b"), 4096, 64, 1e12)
    with pytest.raises(PlanError, match=r"fits no layout on 8 x A100-40GB.*nearest feasible: --gpus \d+"):
        search(work, make_cluster("A100-40GB"), 8)


def test_zero_tokens_is_refused_with_a_suggestion():
    work = Workload(shape("llama3-8b"), 4096, 64, 0)
    with pytest.raises(PlanError, match=r"tokens must be positive.*--tokens 161B"):
        search(work, make_cluster("H800"), 64)


def test_batch_that_splits_over_no_layout():
    work = Workload(shape("llama-tiny"), 1024, 3, 1e9)  # tp <= 4 heads and pp <= 4 layers: >= 4 data ranks
    with pytest.raises(PlanError, match="--global-batch 64"):
        search(work, make_cluster("H800"), 64, recompute="none")


def test_parse_layout_and_counts():
    assert parse_layout("fsdp=32, tp=8") == {"fsdp": 32, "tp": 8}
    assert parse_layout("dp=2,pp=4,mb=2") == {"dp": 2, "pp": 4, "mb": 2}
    for bad in ("fsdp32", "cp=2", "tp=two", "tp=0", ""):
        with pytest.raises(PlanError, match="--layout"):
            parse_layout(bad)
    assert parse_count("2T") == 2e12 and parse_count("300B") == 3e11 and parse_count("1.5e9") == 1.5e9
    with pytest.raises(PlanError, match="2T"):
        parse_count("lots")


def test_evaluate_layout_picks_a_fitting_variant_or_says_what_would_fit():
    work = Workload(shape("llama3-70b"), 4096, 1024, 2e12)
    cluster = make_cluster("H800")
    result = evaluate_layout(work, cluster, {"fsdp": 32, "tp": 8}, None)
    assert (result.layout.fsdp, result.layout.tp, result.gpus) == (32, 8, 256) and result.fits
    with pytest.raises(
        PlanError, match=r"needs [0-9.]+ GB per device; H800 has \d+ GB usable; nearest feasible layout"
    ):
        evaluate_layout(work, cluster, {"dp": 32}, "none")  # 70B replicated on every device
    with pytest.raises(PlanError, match=r"fits no layout on 8 x H800.*nearest feasible: --gpus"):
        evaluate_layout(work, cluster, {"dp": 8}, None)
    with pytest.raises(PlanError, match="does not divide"):
        evaluate_layout(work, cluster, {"fsdp": 8, "tp": 3}, None)


def test_parallel_section_is_valid_for_jijian_train():
    work = Workload(shape("llama3-70b"), 4096, 1024, 2e12)
    cluster = make_cluster("H800")
    result = evaluate_layout(work, cluster, {"dp": 2, "fsdp": 8, "tp": 8, "pp": 8}, None)
    section = parallel_section(result)
    assert section == {
        "dp_replicate": 2,
        "dp_shard": 8,
        "tp": 8,
        "sequence_parallel": True,
        "pp": 8,
        "pp_schedule": result.layout.schedule,
        "pp_microbatches": result.microbatches,
    }
    assert result.microbatches == 1024 // (16 * result.layout.micro_batch)
    ParallelConfig.model_validate(section)


def test_searched_layouts_give_a_train_section_the_layout_rules_accept():
    from jijian.plan.train_config import train_settings
    from jijian.spec.layout import batch_problem, pipeline_problem, tensor_parallel_problem

    work = Workload(shape("llama3-70b"), 4096, 512, 1e12)
    model = ModelConfig(preset="llama3-70b")
    found = search(work, make_cluster("H800"), 256, top=50, jijian_only=True)
    assert any(e.layout.pp > 1 for e in found.best) and any(e.layout.pp == 1 for e in found.best)
    for result in found.best:
        train, layout = train_settings(result), result.layout
        assert train["batch_size"] * train["grad_accum_steps"] == 512  # the planned global batch
        microbatches = result.microbatches if layout.pp > 1 else 1
        # The same rules `jijian train` checks before any rank starts (jijian.spec.layout).
        assert tensor_parallel_problem(
            layout.tp, heads=model.n_heads, kv_heads=model.kv_heads, ffn=model.ffn_dim, seq_len=4096
        ) is None
        assert pipeline_problem(
            layout.pp, schedule=layout.schedule, microbatches=microbatches, layers=model.n_layers, tied_embeddings=False
        ) is None
        assert batch_problem(train["batch_size"], layout.data_ranks, microbatches) is None


def test_zero_layouts_parse_evaluate_and_are_searched():
    assert parse_layout("dp=64,zero=1,tp=8") == {"dp": 64, "zero": 1, "tp": 8}
    work = Workload(shape("llama3-70b"), 4096, 1024, 2e12)
    cluster = make_cluster("H800")
    zero1 = evaluate_layout(work, cluster, {"dp": 64, "zero": 1, "tp": 8, "pp": 2}, None)
    zero2 = evaluate_layout(work, cluster, {"dp": 64, "zero": 2, "tp": 8, "pp": 2}, None)
    plain = evaluate_layout(work, cluster, {"dp": 64, "tp": 8, "pp": 2}, "full")
    assert zero1.layout.zero_stage == 1 and "zero=1" in zero1.layout.describe()
    # Sharding the optimizer (ZeRO-1) and then the gradients (ZeRO-2) each takes model-state memory off a device.
    states = [e.memory_breakdown_gb["model_states"] for e in (plain, zero1, zero2)]
    assert states[0] > states[1] > states[2]
    assert not zero1.jijian_runs and zero2.jijian_runs
    result = search(Workload(shape("llama3-8b"), 4096, 256, 1e11), make_cluster("A100-80GB"), 64, top=1000)
    assert {e.layout.zero_stage for e in result.best} >= {None, 1, 2}


def test_zero_with_fsdp_names_the_nearest_feasible_layouts():
    expected = r"zero=1 with fsdp=64.*nearest feasible: 'dp=64,zero=1,tp=8' .* 'fsdp=64,tp=8'"
    with pytest.raises(PlanError, match=expected):
        parse_layout("fsdp=64,zero=1,tp=8")
    with pytest.raises(PlanError, match=r"zero=3 is fully-sharded.*'fsdp=64'"):
        parse_layout("dp=64,zero=3")
    with pytest.raises(PlanError, match=r"zero=2 shards over the dp ranks.*'dp=8,zero=2,tp=8'"):
        parse_layout("zero=2,tp=8")


def test_zero2_emits_fsdp2_without_resharding_and_zero1_is_refused():
    work = Workload(shape("llama3-8b"), 4096, 256, 1e11)
    cluster = make_cluster("A100-80GB")
    section = parallel_section(evaluate_layout(work, cluster, {"dp": 64, "zero": 2}, None))
    assert section["dp_shard"] == 64 and section["dp_replicate"] == 1
    assert ParallelConfig.model_validate(section).fsdp_reshard_after_forward == "never"
    with pytest.raises(PlanError, match=r"no ZeRO-1.*zero=2"):
        parallel_section(evaluate_layout(work, cluster, {"dp": 64, "zero": 1}, None))
    best = search(work, cluster, 64, top=1, jijian_only=True).best[0]
    assert best.jijian_runs
