"""The model on its own: shapes, causality, cached decoding, meta-device construction, tying."""

from __future__ import annotations

import pytest
import torch

from jijian.config import ModelConfig
from jijian.model import build_model, generate
from jijian.model.generate import ContiguousKVCache


def test_forward_shape_and_dtype(tiny_config):
    model = build_model(tiny_config)
    logits = model(torch.randint(0, 512, (3, 17)))
    assert logits.shape == (3, 17, 512)
    assert logits.dtype == torch.float32


def test_attention_is_causal(tiny_config):
    torch.manual_seed(0)
    model = build_model(tiny_config).eval()
    tokens = torch.randint(0, 512, (1, 20))
    changed = tokens.clone()
    changed[0, 12] = (changed[0, 12] + 1) % 512
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_cached_decoding_matches_full_forward(tiny_config):
    torch.manual_seed(1)
    model = build_model(tiny_config).eval()
    tokens = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        full = model(tokens)
        cache = ContiguousKVCache(model, batch=2, max_len=24)
        # A prefill, a chunk that starts mid-sequence (needs an offset causal mask), then single tokens.
        parts = [model(tokens[:, :10], cache=cache, start_pos=0), model(tokens[:, 10:16], cache=cache, start_pos=10)]
        parts += [model(tokens[:, i : i + 1], cache=cache, start_pos=i) for i in range(16, 24)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cache_overflow_is_an_error(tiny_config):
    model = build_model(tiny_config).eval()
    cache = ContiguousKVCache(model, batch=1, max_len=4)
    with pytest.raises(ValueError, match="holds 4 positions"), torch.no_grad():
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)


@pytest.mark.parametrize(
    ("preset", "billions"),
    [
        ("llama-125m", 0.1247),
        ("llama-1b", 1.2358),
        ("llama3-8b", 8.0303),
        ("llama3-70b", 70.5537),
        ("llama3-405b", 405.8534),
    ],
)
def test_presets_build_on_meta_device_with_real_sizes(preset, billions):
    model = build_model(ModelConfig(preset=preset), device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert model.num_parameters() / 1e9 == pytest.approx(billions, abs=1e-4)


def test_tied_embeddings_share_one_tensor(tiny_config):
    cfg = tiny_config.model_copy(update={"tie_embeddings": True})
    model = build_model(cfg)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    untied = build_model(tiny_config)
    assert untied.num_parameters() - model.num_parameters() == 512 * 64


def test_initialisation_is_seeded_and_scaled(tiny_config):
    torch.manual_seed(3)
    a = build_model(tiny_config)
    torch.manual_seed(3)
    b = build_model(tiny_config)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    layer = a.model.layers["0"]
    assert torch.all(layer.input_layernorm.weight == 1)
    # Residual projections start smaller so the residual stream's variance does not grow with depth.
    assert layer.self_attn.o_proj.weight.std() < layer.self_attn.q_proj.weight.std()


def test_generate_greedy_is_deterministic_and_stops_at_eos(tiny_config):
    torch.manual_seed(0)
    model = build_model(tiny_config).eval()
    first = generate(model, [5, 6, 7], 12)
    assert first == generate(model, [5, 6, 7], 12)
    assert len(first) == 12
    stop = first[3]
    cut = generate(model, [5, 6, 7], 12, eos_id=stop)
    assert cut[-1] == stop and len(cut) == first.index(stop) + 1


def test_generate_sampling_is_seeded(tiny_config):
    model = build_model(tiny_config).eval()
    a = generate(model, [1, 2], 16, temperature=1.0, top_k=50, seed=7)
    assert a == generate(model, [1, 2], 16, temperature=1.0, top_k=50, seed=7)
    assert all(0 <= t < 512 for t in a)


def test_generate_rejects_too_long_requests(tiny_config):
    model = build_model(tiny_config)
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, [1] * 250, 10)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [], 10)
