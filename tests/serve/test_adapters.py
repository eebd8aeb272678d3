"""LoRA adapters in the server: mixed-adapter batches equal each adapter alone, and a wrong base is refused."""

from __future__ import annotations

import pytest
import torch

from jijian.config import ModelConfig
from jijian.model import build_model
from jijian.model.generate import generate
from jijian.model.lora import LoRAError, add_lora, base_fingerprint, lora_state, merge_lora_state, save_peft_adapter
from jijian.serve.engine import EngineConfig, LLMEngine
from jijian.serve.request import InvalidRequestError, SamplingParams

TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj"]


def make_adapter(base, directory, seed: int):
    """A 'trained' adapter (random B) for `base`, saved in PEFT format; returns the merged model too."""
    model = build_model(base.cfg, init=False).eval()
    model.load_state_dict(base.state_dict())
    add_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=TARGETS)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    state = model.state_dict()
    save_peft_adapter(
        lora_state(state),
        directory,
        rank=4,
        alpha=8.0,
        dropout=0.0,
        targets=TARGETS,
        base_fingerprint=base_fingerprint(base.cfg),
    )
    merged = build_model(base.cfg, init=False).eval()
    merged.load_state_dict(merge_lora_state(state, 2.0))
    return merged


@pytest.fixture(scope="module")
def adapters(small_model, tmp_path_factory):
    base, _ = small_model
    root = tmp_path_factory.mktemp("adapters")
    merged = {name: make_adapter(base, root / name, seed) for name, seed in (("legal", 1), ("support", 2))}
    return {name: root / name for name in merged}, merged


def engine_for(model, adapter_dirs=None, **overrides) -> LLMEngine:
    config = {"num_blocks": 128, "block_size": 4, "max_batch_tokens": 48, "max_num_seqs": 16, **overrides}
    return LLMEngine(model, None, EngineConfig(**config), adapters=adapter_dirs)


def test_a_mixed_adapter_batch_equals_each_adapter_alone(small_model, adapters, prompts_of_lengths):
    base, _ = small_model
    dirs, merged = adapters
    prompts = prompts_of_lengths([6, 30, 11, 45, 3, 20], base.cfg.vocab_size, 7)
    # Every prompt under every choice: the same tokens through different adapters must not share cached blocks.
    choices = [None, "legal", "support"]
    jobs = [(p, c) for p in prompts for c in choices]
    params = [SamplingParams(max_tokens=12, ignore_eos=True, adapter=c) for _, c in jobs]
    engine = engine_for(base, dirs)
    # The base model runs the prompts first, so their blocks sit in the prefix cache for the mixed batch.
    engine.generate(prompts, SamplingParams(max_tokens=12, ignore_eos=True))
    mixed = engine.generate([p for p, _ in jobs], params)
    assert engine.stats.prompt_tokens_cached > 0  # prefix caching was on, and shared only within one choice
    for (prompt, choice), out in zip(jobs, mixed, strict=True):
        reference = base if choice is None else merged[choice]
        assert out == generate(reference, prompt, 12), (len(prompt), choice)
    # ... and each adapter served alone gives the same tokens.
    alone = engine_for(base, {"legal": dirs["legal"]}).generate(
        prompts, SamplingParams(max_tokens=12, ignore_eos=True, adapter="legal")
    )
    assert alone == [out for (_, c), out in zip(jobs, mixed, strict=True) if c == "legal"]
    assert mixed[1] != mixed[0]  # the adapter changes the answer


def test_an_unknown_adapter_is_a_request_error(small_model, adapters):
    base, _ = small_model
    engine = engine_for(base, adapters[0])
    with pytest.raises(InvalidRequestError, match="no adapter 'finance'"):
        engine.add_request([5, 6, 7], SamplingParams(max_tokens=2, adapter="finance"))


def test_an_adapter_trained_on_another_base_is_refused(small_model, tmp_path):
    base, _ = small_model
    other_cfg = ModelConfig(**{**base.cfg.model_dump(exclude={"preset", "hf_path"}), "ffn_dim": 96})
    torch.manual_seed(0)
    make_adapter(build_model(other_cfg).eval(), tmp_path / "other", seed=3)
    with pytest.raises(LoRAError, match=r"'other'.*another base model.*ffn_dim 96 vs served 160"):
        engine_for(base, {"other": tmp_path / "other"})
    # Without the fingerprint file, the tensor shapes still give it away.
    (tmp_path / "other" / "jijian_base.json").unlink()
    with pytest.raises(LoRAError, match=r"'other'.*another base model.*up_proj"):
        engine_for(base, {"other": tmp_path / "other"})


def test_the_http_api_routes_by_model_name_and_lists_the_adapters(small_model, adapters):
    import openai

    from jijian.guard.http_auth import HttpAuth
    from jijian.guard.principals import Principal
    from jijian.serve.api import ApiSettings, create_app
    from jijian.serve.async_engine import AsyncEngine
    from jijian.serve.server import serve_in_thread

    base, tokenizer = small_model
    dirs, merged = adapters
    engine = AsyncEngine(LLMEngine(base, tokenizer, EngineConfig(num_blocks=128, block_size=4), adapters=dirs))
    settings = ApiSettings(model_name="tiny", adapters=list(dirs))
    auth = HttpAuth.with_keys({"k": Principal("alice")})
    with serve_in_thread(create_app(engine, tokenizer, settings, auth=auth)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        listed = [(m.id, getattr(m, "parent", None)) for m in client.models.list().data]
        assert listed == [("tiny", None), ("legal", "tiny"), ("support", "tiny")]
        prompt = tokenizer.encode("def main(args):", add_bos=True)
        for model, reference in (("tiny", base), ("legal", merged["legal"]), ("tiny:support", merged["support"])):
            result = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
            expected = generate(reference, prompt, 8, eos_id=tokenizer.eos_id)
            assert result.choices[0].text == tokenizer.decode(expected), model
        with pytest.raises(openai.NotFoundError, match="legal"):
            client.completions.create(model="finance", prompt=prompt, max_tokens=2)
