"""deploy.toml loading: presets, HF config.json shapes, path resolution, and errors that locate the fault."""

from __future__ import annotations

import json
import re
from importlib.resources import as_file, files
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jijian.config import MODEL_PRESETS, ConfigError, DeployConfig, dump_config, load_config


def write_config(directory: Path, text: str, name: str = "deploy.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def roundtrip(config: DeployConfig, directory: Path) -> DeployConfig:
    return load_config(write_config(directory, dump_config(config), name="resolved.toml"))


HF_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 300,
    "rope_parameters": {
        "rope_theta": 500000,
        "rope_type": "llama3",
        "factor": 8,
        "low_freq_factor": 1,
        "high_freq_factor": 4,
        "original_max_position_embeddings": 64,
    },
}


def write_hf_dir(directory: Path, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


# --- the packaged example and the round trip --------------------------------------------------------------


def test_packaged_example_validates_and_round_trips(tmp_path):
    with as_file(files("jijian.config") / "example.toml") as example:
        config = load_config(example)
    assert config.name == "my-deployment"
    assert config.model.preset == "llama-tiny"
    assert config.model.dim == 128
    assert config.train.steps == 1000
    assert config.train.lr == pytest.approx(3e-4)
    assert config.train.output_dir.is_absolute()
    assert roundtrip(config, tmp_path) == config


def test_empty_file_gives_defaults_and_round_trips(tmp_path):
    config = load_config(write_config(tmp_path, ""))
    assert config.model.preset == "llama-tiny"
    assert config.model.n_kv_heads == 2
    assert config.model.head_dim == 32
    # Default output paths resolve against the config file's directory.
    assert config.train.output_dir == (tmp_path / "runs" / "train").resolve()
    assert roundtrip(config, tmp_path) == config


def test_dump_is_fully_resolved(tmp_path):
    (tmp_path / "tok.json").write_text("{}", encoding="utf-8")
    config = load_config(write_config(tmp_path, '[tokenizer]\npath = "tok.json"\n[model]\npreset = "llama3-8b"\n'))
    text = dump_config(config)
    assert f'path = "{(tmp_path / "tok.json").resolve()}"' in text
    assert "[model.rope_scaling]" in text
    assert "dim = 4096" in text
    assert roundtrip(config, tmp_path) == config


# --- presets -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
def test_every_preset_resolves_and_round_trips(tmp_path, name):
    config = load_config(write_config(tmp_path, f'[model]\npreset = "{name}"\n'))
    model = config.model
    for key, value in MODEL_PRESETS[name].items():
        if key == "rope_scaling":
            assert model.rope_scaling is not None
            assert model.rope_scaling.model_dump() == value
        else:
            assert getattr(model, key) == value, key
    assert model.n_heads % model.kv_heads == 0
    if "head_dim" not in MODEL_PRESETS[name]:  # Qwen3's heads are wider than dim / n_heads, as published
        assert model.head_size * model.n_heads == model.dim
    assert roundtrip(config, tmp_path) == config


def test_llama3_8b_has_the_real_shape(tmp_path):
    model = load_config(write_config(tmp_path, '[model]\npreset = "llama3-8b"\n')).model
    assert (model.dim, model.n_layers, model.n_heads, model.n_kv_heads) == (4096, 32, 32, 8)
    assert (model.ffn_dim, model.vocab_size, model.head_dim) == (14336, 128256, 128)
    assert model.rope_theta == 500000.0
    assert model.rope_scaling is not None
    assert model.rope_scaling.rope_type == "llama3"
    assert model.rope_scaling.factor == 8.0
    assert model.rope_scaling.original_max_position_embeddings == 8192
    assert model.tie_embeddings is False


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("llama-1b", (2048, 16, 32, 8, 8192, 128256, True)),
        ("llama3-70b", (8192, 80, 64, 8, 28672, 128256, False)),
        ("llama3-405b", (16384, 126, 128, 8, 53248, 128256, False)),
    ],
)
def test_other_llama_presets_have_the_real_shapes(tmp_path, name, shape):
    m = load_config(write_config(tmp_path, f'[model]\npreset = "{name}"\n')).model
    assert (m.dim, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim, m.vocab_size, m.tie_embeddings) == shape


def test_llama_1b_uses_rope_factor_32(tmp_path):
    model = load_config(write_config(tmp_path, '[model]\npreset = "llama-1b"\n')).model
    assert model.rope_scaling is not None
    assert model.rope_scaling.factor == 32.0


def test_explicit_key_overrides_preset(tmp_path):
    text = '[model]\npreset = "llama3-8b"\nvocab_size = 32000\nn_layers = 2\nmax_seq_len = 4096\n'
    model = load_config(write_config(tmp_path, text)).model
    assert (model.vocab_size, model.n_layers, model.max_seq_len) == (32000, 2, 4096)
    assert (model.dim, model.n_heads, model.n_kv_heads, model.ffn_dim) == (4096, 32, 8, 14336)


def test_explicit_rope_scaling_overrides_preset(tmp_path):
    text = '[model]\npreset = "llama3-8b"\nrope_scaling = { rope_type = "linear", factor = 2.0 }\n'
    model = load_config(write_config(tmp_path, text)).model
    assert model.rope_scaling is not None
    assert (model.rope_scaling.rope_type, model.rope_scaling.factor) == ("linear", 2.0)


def test_presets_are_not_mutated_by_overrides(tmp_path):
    load_config(write_config(tmp_path, '[model]\npreset = "llama-tiny"\ndim = 512\n'))
    assert MODEL_PRESETS["llama-tiny"]["dim"] == 128
    assert load_config(write_config(tmp_path, '[model]\npreset = "llama-tiny"\n')).model.dim == 128


def test_unknown_preset_names_model_and_lists_presets(tmp_path):
    path = write_config(tmp_path, '[model]\npreset = "gpt-5"\n')
    message = load_error(path)
    assert str(path) in message
    assert "model" in message
    assert "gpt-5" in message
    for name in MODEL_PRESETS:
        assert name in message


def test_model_without_preset_or_shape_reports_missing_keys(tmp_path):
    message = load_error(write_config(tmp_path, "[model]\nn_layers = 2\n"))
    for key in ("model.dim", "model.n_heads", "model.ffn_dim", "model.vocab_size"):
        assert key in message


def test_full_explicit_shape_without_preset(tmp_path):
    text = "[model]\ndim = 64\nn_layers = 2\nn_heads = 4\nffn_dim = 128\nvocab_size = 300\n"
    model = load_config(write_config(tmp_path, text)).model
    assert model.preset is None
    assert (model.n_kv_heads, model.head_dim) == (4, 16)


# --- unknown keys --------------------------------------------------------------------------------------------


def test_unknown_key_names_file_key_line_and_suggestion(tmp_path):
    path = write_config(tmp_path, 'name = "x"\n\n[train]\nsteps = 10\nlrr = 0.1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "train.lrr" in message
    assert "line 5" in message
    assert "did you mean 'lr'" in message
    assert info.value.source == str(path)
    assert len(info.value.problems) == 1


def test_unknown_key_in_later_section_gets_its_own_line(tmp_path):
    text = "[train]\nsteps = 10\n\n[serve]\nhost = 'localhost'\nprot = 8080\n"
    message = load_error(write_config(tmp_path, text))
    assert "serve.prot" in message
    assert "line 6" in message
    assert "did you mean 'port'" in message


def test_unknown_top_level_section(tmp_path):
    path = write_config(tmp_path, "[train]\nsteps = 10\n\n[trian]\nsteps = 10\n")
    message = load_error(path)
    assert str(path) in message
    assert "'trian'" in message
    assert "did you mean 'train'" in message


def test_unknown_top_level_key_gets_a_line(tmp_path):
    message = load_error(write_config(tmp_path, 'name = "x"\nnmae = "y"\n'))
    assert "nmae" in message
    assert "line 2" in message
    assert "did you mean 'name'" in message


def test_unknown_top_level_section_names_its_line(tmp_path):
    message = load_error(write_config(tmp_path, "[train]\nsteps = 10\n\n[trian]\nsteps = 10\n"))
    assert "line 4" in message


def test_all_problems_are_reported_at_once(tmp_path):
    text = '[train]\nlrr = 0.1\nsteps = "ten"\n\n[serve]\nport = 70000\n'
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, text))
    assert len(info.value.problems) == 3
    joined = "\n".join(info.value.problems)
    assert "train.lrr" in joined
    assert "train.steps" in joined
    assert "serve.port" in joined


# --- wrong types (strict: nothing is coerced) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ('[train]\nsteps = "ten"\n', "train.steps", 2),
        ('[train]\nseed = 1\nlr = "0.1"\n', "train.lr", 3),
        ("[train]\nsteps = 10.0\n", "train.steps", 2),
        ('[model]\npreset = "llama-tiny"\ntie_embeddings = "yes"\n', "model.tie_embeddings", 3),
        ('[model]\npreset = "llama-tiny"\ntie_embeddings = 1\n', "model.tie_embeddings", 3),
        ('[serve]\nport = "8000"\n', "serve.port", 2),
        ('[data]\nsources = "corpus.txt"\n', "data.sources", 2),
        ("name = 3\n", "name", 1),
    ],
)
def test_wrong_type_names_file_and_key(tmp_path, text, key, line):
    path = write_config(tmp_path, text)
    message = load_error(path)
    assert str(path) in message
    assert key in message
    assert f"line {line}" in message


def test_integer_is_accepted_for_a_float(tmp_path):
    assert load_config(write_config(tmp_path, "[train]\nlr = 1\n")).train.lr == 1.0


def test_bad_literal_names_the_key(tmp_path):
    message = load_error(write_config(tmp_path, '[train]\ndevice = "tpu"\n'))
    assert "train.device" in message
    assert "tpu" in message


# --- out of range ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[train]\nlr = -1\n", "train.lr"),
        ("[train]\nlr = 0\n", "train.lr"),
        ("[train]\nsteps = 0\n", "train.steps"),
        ("[train]\nseq_len = 1\n", "train.seq_len"),
        ("[serve]\nport = 70000\n", "serve.port"),
        ("[serve]\nport = 0\n", "serve.port"),
        ("[parallel]\ntp = 0\n", "parallel.tp"),
        ("[parallel]\ndp_shard = -2\n", "parallel.dp_shard"),
        ("[tokenizer]\nvocab_size = 100\n", "tokenizer.vocab_size"),
        ("[data]\nvalidation_fraction = 1.0\n", "data.validation_fraction"),
        ("[guard]\ninjection_threshold = 1.5\n", "guard.injection_threshold"),
    ],
)
def test_out_of_range_names_the_key(tmp_path, text, needle):
    path = write_config(tmp_path, text)
    message = load_error(path)
    assert str(path) in message
    assert needle in message


def test_dp_shard_zero_is_refused_naming_the_section(tmp_path):
    message = load_error(write_config(tmp_path, "[parallel]\ndp_shard = 0\n"))
    assert "parallel" in message
    assert "dp_shard" in message


def test_dp_shard_auto_and_positive_are_accepted(tmp_path):
    assert load_config(write_config(tmp_path, "[parallel]\ndp_shard = -1\n")).parallel.dp_shard == -1
    assert load_config(write_config(tmp_path, "[parallel]\ndp_shard = 4\n")).parallel.dp_shard == 4


def test_warmup_longer_than_steps_is_refused(tmp_path):
    message = load_error(write_config(tmp_path, "[train]\nsteps = 10\nwarmup_steps = 11\n"))
    assert "train" in message
    assert "warmup_steps (11)" in message
    assert "steps (10)" in message


def test_warmup_equal_to_steps_is_accepted(tmp_path):
    train = load_config(write_config(tmp_path, "[train]\nsteps = 10\nwarmup_steps = 10\n")).train
    assert (train.steps, train.warmup_steps) == (10, 10)


# --- referenced files -----------------------------------------------------------------------------------------


def test_missing_tokenizer_file_names_key_and_absolute_path(tmp_path, monkeypatch):
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write_config(config_dir, '[tokenizer]\npath = "missing.json"\n')
    message = load_error(path)
    assert "tokenizer.path" in message
    assert str((config_dir / "missing.json").resolve()) in message
    assert str(elsewhere / "missing.json") not in message


def test_missing_hf_path_names_key_and_absolute_path(tmp_path, monkeypatch):
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    message = load_error(write_config(config_dir, '[model]\nhf_path = "nope"\n'))
    assert "model.hf_path" in message
    assert str((config_dir / "nope").resolve()) in message


def test_missing_serve_model_path_names_key(tmp_path):
    message = load_error(write_config(tmp_path, '[serve]\nmodel_path = "runs/none"\n'))
    assert "serve.model_path" in message
    assert str((tmp_path / "runs" / "none").resolve()) in message


def test_relative_paths_resolve_against_the_config_directory(tmp_path, monkeypatch):
    config_dir = tmp_path / "project"
    (config_dir / "tok").mkdir(parents=True)
    (config_dir / "tok" / "tokenizer.json").write_text("{}", encoding="utf-8")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    text = '[tokenizer]\npath = "tok/tokenizer.json"\n[train]\noutput_dir = "out/train"\n[kb]\npath = "../kb"\n'
    config = load_config(write_config(config_dir, text))
    assert config.tokenizer.path == (config_dir / "tok" / "tokenizer.json").resolve()
    assert config.tokenizer.path.is_absolute()
    assert config.train.output_dir == (config_dir / "out" / "train").resolve()
    assert config.kb.path == (tmp_path / "kb").resolve()
    # Output paths are only resolved, not created.
    assert not (config_dir / "out").exists()


def test_config_given_by_relative_path_resolves_against_its_directory(tmp_path, monkeypatch):
    config_dir = tmp_path / "project"
    config_dir.mkdir()
    (config_dir / "tokenizer.json").write_text("{}", encoding="utf-8")
    write_config(config_dir, '[tokenizer]\npath = "tokenizer.json"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("project") / "deploy.toml")
    assert config.tokenizer.path == (config_dir / "tokenizer.json").resolve()


def test_absolute_path_is_kept(tmp_path):
    target = tmp_path / "abs" / "tokenizer.json"
    target.parent.mkdir()
    target.write_text("{}", encoding="utf-8")
    config = load_config(write_config(tmp_path / "abs", f'[tokenizer]\npath = "{target}"\n'))
    assert config.tokenizer.path == target


# --- unreadable files -----------------------------------------------------------------------------------------


def test_invalid_toml_names_file(tmp_path):
    path = write_config(tmp_path, "[train\nsteps = 10\n")
    message = load_error(path)
    assert str(path) in message
    assert "invalid TOML" in message


def test_duplicate_key_is_invalid_toml(tmp_path):
    message = load_error(write_config(tmp_path, "[train]\nsteps = 10\nsteps = 20\n"))
    assert "invalid TOML" in message


def test_missing_config_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


def test_directory_as_config_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(tmp_path) in str(info.value)


# --- starting from a Hugging Face config.json -----------------------------------------------------------------


def test_hf_path_takes_shape_from_config_json(tmp_path):
    write_hf_dir(tmp_path / "models" / "tiny", HF_LLAMA)
    config = load_config(write_config(tmp_path, '[model]\nhf_path = "models/tiny"\n'))
    model = config.model
    assert model.hf_path == (tmp_path / "models" / "tiny").resolve()
    assert model.preset is None
    assert (model.dim, model.n_layers, model.n_heads, model.n_kv_heads) == (64, 2, 4, 2)
    assert (model.ffn_dim, model.vocab_size, model.head_dim) == (128, 300, 16)
    assert model.rope_theta == 500000.0
    assert model.rope_scaling is not None
    assert model.rope_scaling.rope_type == "llama3"
    assert model.rope_scaling.factor == 8.0
    assert model.rope_scaling.low_freq_factor == 1.0
    assert model.rope_scaling.high_freq_factor == 4.0
    assert model.rope_scaling.original_max_position_embeddings == 64
    assert roundtrip(config, tmp_path) == config


def test_hf_v4_layout_rope_theta_and_rope_scaling_type(tmp_path):
    hf = {k: v for k, v in HF_LLAMA.items() if k != "rope_parameters"}
    hf.update(
        rope_theta=250000.0,
        rope_scaling={"type": "linear", "factor": 4.0},
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )
    write_hf_dir(tmp_path / "hf", hf)
    model = load_config(write_config(tmp_path, '[model]\nhf_path = "hf"\n')).model
    assert model.rope_theta == 250000.0
    assert model.rope_scaling is not None
    assert (model.rope_scaling.rope_type, model.rope_scaling.factor) == ("linear", 4.0)
    assert model.max_seq_len == 512
    assert model.norm_eps == 1e-6
    assert model.tie_embeddings is True


def test_hf_without_rope_scaling(tmp_path):
    hf = {k: v for k, v in HF_LLAMA.items() if k != "rope_parameters"}
    hf["rope_theta"] = 10000.0
    write_hf_dir(tmp_path / "hf", hf)
    model = load_config(write_config(tmp_path, '[model]\nhf_path = "hf"\n')).model
    assert model.rope_scaling is None
    assert model.rope_theta == 10000.0


def test_explicit_key_overrides_hf_config(tmp_path):
    write_hf_dir(tmp_path / "hf", HF_LLAMA)
    model = load_config(write_config(tmp_path, '[model]\nhf_path = "hf"\nmax_seq_len = 128\nn_layers = 1\n')).model
    assert (model.max_seq_len, model.n_layers, model.dim) == (128, 1, 64)


@pytest.mark.parametrize("key", ["attention_bias", "mlp_bias"])
def test_hf_biases_are_refused_naming_config_json(tmp_path, key):
    hf_dir = write_hf_dir(tmp_path / "hf", {**HF_LLAMA, key: True})
    path = write_config(tmp_path, '[model]\nhf_path = "hf"\n')
    message = load_error(path)
    assert str(path) in message
    assert str((hf_dir / "config.json").resolve()) in message
    assert key in message


def test_hf_unsupported_rope_type_is_refused(tmp_path):
    hf = {**HF_LLAMA, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "yarn", "factor": 4.0}}
    hf_dir = write_hf_dir(tmp_path / "hf", hf)
    message = load_error(write_config(tmp_path, '[model]\nhf_path = "hf"\n'))
    assert "yarn" in message
    assert str((hf_dir / "config.json").resolve()) in message


def test_hf_malformed_config_json_is_a_config_error(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{not json", encoding="utf-8")
    message = load_error(write_config(tmp_path, '[model]\nhf_path = "hf"\n'))
    assert "config.json" in message


def test_hf_dir_without_config_json_needs_a_shape(tmp_path):
    (tmp_path / "hf").mkdir()
    message = load_error(write_config(tmp_path, '[model]\nhf_path = "hf"\n'))
    assert "model.dim" in message


# --- attention shape checks ------------------------------------------------------------------------------------


def test_n_heads_not_multiple_of_kv_heads_is_refused(tmp_path):
    message = load_error(write_config(tmp_path, '[model]\npreset = "llama-tiny"\nn_heads = 8\nn_kv_heads = 3\n'))
    assert "model" in message
    assert re.search(r"n_heads \(8\) must be a multiple of n_kv_heads \(3\)", message)


def test_dim_not_divisible_by_n_heads_is_refused(tmp_path):
    message = load_error(
        write_config(tmp_path, '[model]\npreset = "llama-tiny"\nn_heads = 8\nn_kv_heads = 4\ndim = 100\n')
    )
    assert "model" in message
    assert "dim (100) must be divisible by n_heads (8)" in message


def test_explicit_head_dim_allows_dim_not_divisible(tmp_path):
    model = load_config(
        write_config(
            tmp_path, '[model]\npreset = "llama-tiny"\nn_heads = 8\nn_kv_heads = 4\ndim = 100\nhead_dim = 16\n'
        )
    ).model
    assert (model.dim, model.head_dim, model.n_heads) == (100, 16, 8)


def test_odd_head_dim_is_refused(tmp_path):
    message = load_error(
        write_config(tmp_path, '[model]\npreset = "llama-tiny"\nn_heads = 8\nn_kv_heads = 4\ndim = 72\n')
    )
    assert "head_dim (9) must be even" in message


def test_kv_heads_default_to_n_heads(tmp_path):
    text = "[model]\ndim = 64\nn_layers = 1\nn_heads = 4\nffn_dim = 128\nvocab_size = 300\n"
    assert load_config(write_config(tmp_path, text)).model.n_kv_heads == 4


# --- property: valid [train] integers always load and round-trip ---------------------------------------------


@st.composite
def train_values(draw):
    steps = draw(st.integers(min_value=1, max_value=10**9))
    return {
        "steps": steps,
        "batch_size": draw(st.integers(min_value=1, max_value=10**6)),
        "seq_len": draw(st.integers(min_value=2, max_value=10**6)),
        "warmup_steps": draw(st.integers(min_value=0, max_value=steps)),
        "seed": draw(st.integers(min_value=-(2**62), max_value=2**62)),
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=train_values())
def test_valid_train_integers_load_and_round_trip(tmp_path, values):
    text = "[train]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
    config = load_config(write_config(tmp_path, text))
    for key, value in values.items():
        assert getattr(config.train, key) == value
    assert roundtrip(config, tmp_path) == config


# --- known defects ----------------------------------------------------------------------------------------------


def test_non_string_preset_is_a_config_error(tmp_path):
    message = load_error(write_config(tmp_path, '[model]\npreset = ["llama-tiny"]\n'))
    assert "model" in message


def test_unknown_nested_key_gets_a_suggestion(tmp_path):
    text = '[model]\npreset = "llama-tiny"\nrope_scaling = { factor = 2.0, low_freq_factr = 1.0 }\n'
    message = load_error(write_config(tmp_path, text))
    assert "model.rope_scaling.low_freq_factr" in message
    assert "did you mean 'low_freq_factor'" in message


def test_serve_weights_is_checked_and_quantization_is_its_old_name(tmp_path):
    message = load_error(write_config(tmp_path, '[serve]\nweights = "int3"\n'))
    assert "serve.weights" in message and "int3" in message
    assert (
        load_config(write_config(tmp_path, '[serve]\nweights = "int4"\nint4_group_size = 64\n')).serve.weights == "int4"
    )
    assert load_config(write_config(tmp_path, '[serve]\nquantization = "int8"\n')).serve.weights == "int8"
    assert load_config(write_config(tmp_path, '[serve]\nquantization = "none"\n')).serve.weights == "auto"
    assert "serve" in load_error(write_config(tmp_path, '[serve]\nquantization = "int8"\nweights = "int4"\n'))
    assert "serve.int4_group_size" in load_error(write_config(tmp_path, "[serve]\nint4_group_size = 48\n"))
