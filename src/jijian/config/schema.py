"""The typed shape of `deploy.toml`: one pydantic model per section, validated strictly."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)

from jijian.config.hf_config import model_fields_from_hf, read_hf_config
from jijian.config.presets import MODEL_PRESETS


class Section(BaseModel):
    """Base for every section: unknown keys and silent type coercion are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context or {}
    return Path(context.get("base_dir", "."))


def _resolve(path: Path, info: ValidationInfo) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (_base_dir(info) / path).resolve()


def _must_exist(path: Path, info: ValidationInfo) -> Path:
    resolved = _resolve(path, info)
    if not resolved.exists():
        raise ValueError(f"path does not exist: {resolved}")
    return resolved


# Paths in the config are relative to the config file's directory, like includes in a Makefile.
OutputPath = Annotated[Path, Field(strict=False), AfterValidator(_resolve)]
ExistingPath = Annotated[Path, Field(strict=False), AfterValidator(_must_exist)]


class RopeScaling(Section):
    """Long-context RoPE frequency scaling (Llama 3.1 'llama3' or plain 'linear')."""

    rope_type: Literal["llama3", "linear"] = "llama3"
    factor: float = Field(gt=0)
    low_freq_factor: float = Field(default=1.0, gt=0)
    high_freq_factor: float = Field(default=4.0, gt=0)
    original_max_position_embeddings: int = Field(default=8192, ge=1)


Architecture = Literal["llama", "qwen2", "qwen3", "mistral"]


class ModelConfig(Section):
    """Decoder-only transformer shape; `preset` fills every field not given explicitly.

    Qwen2, Qwen3 and Mistral are the Llama decoder with a few switches: q/k/v biases, RMSNorm on each
    query and key head, and sliding-window attention. `architecture` names the family, which decides
    the `config.json` layout a saved model gets.
    """

    preset: str | None = None
    architecture: Architecture = "llama"
    hf_path: ExistingPath | None = None
    dim: int = Field(ge=1)
    n_layers: int = Field(ge=1)
    n_heads: int = Field(ge=1)
    n_kv_heads: int | None = Field(default=None, ge=1)
    head_dim: int | None = Field(default=None, ge=1)
    ffn_dim: int = Field(ge=1)
    vocab_size: int = Field(ge=2)
    max_seq_len: int = Field(default=2048, ge=1)
    norm_eps: float = Field(default=1e-5, gt=0)
    rope_theta: float = Field(default=10000.0, gt=0)
    rope_scaling: RopeScaling | None = None
    tie_embeddings: bool = False
    init_std: float = Field(default=0.02, gt=0)
    attention_bias: bool = Field(default=False, description="biases on the q, k and v projections (Qwen2)")
    qk_norm: bool = Field(default=False, description="RMSNorm over each query and key head before RoPE (Qwen3)")
    sliding_window: int | None = Field(
        default=None, ge=1, description="a query sees only the last this-many positions, itself included (Mistral)"
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any, info: ValidationInfo) -> Any:
        # Shape defaults come from a named preset or from the HF model being started from;
        # keys given explicitly in [model] override either.
        if not isinstance(data, dict):
            return data
        base: dict[str, Any] = {}
        if data.get("preset") is not None:
            name = data["preset"]
            if not isinstance(name, str) or name not in MODEL_PRESETS:
                raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(MODEL_PRESETS)}")
            base = dict(MODEL_PRESETS[name])
        elif isinstance(data.get("hf_path"), str | Path):
            directory = _resolve(Path(data["hf_path"]), info)
            if (directory / "config.json").is_file():
                base = model_fields_from_hf(read_hf_config(directory), source=str(directory / "config.json"))
        return {**base, **data}

    @model_validator(mode="after")
    def _check_shape(self) -> ModelConfig:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
            self.head_dim = self.dim // self.n_heads
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        return self

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (always resolved after validation)."""
        return self.n_kv_heads or self.n_heads

    @property
    def head_size(self) -> int:
        """Width of one attention head (always resolved after validation)."""
        return self.head_dim or self.dim // self.n_heads


class TokenizerConfig(Section):
    """An existing tokenizer (file or directory) or the settings to train one."""

    path: ExistingPath | None = None
    vocab_size: int = Field(default=8192, ge=300)
    min_frequency: int = Field(default=2, ge=1)


class DataConfig(Section):
    """Where training text comes from and where the packed shards go."""

    sources: list[str] = Field(default_factory=list)
    format: Literal["text", "chat"] = Field(
        default="text",
        description="text: documents packed into shards; chat: JSONL rows of OpenAI-style messages for SFT, "
        "rendered with the tokenizer's chat template, loss on assistant tokens only",
    )
    text_field: str = "text"
    messages_field: str = Field(default="messages", description="the JSONL field holding a chat row's messages")
    output_dir: OutputPath = Path("runs/data")
    validation_fraction: float = Field(default=0.01, ge=0, lt=1)
    shard_size_mb: float = Field(default=256.0, gt=0, description="size of each packed shard (the last is smaller)")
    workers: int = Field(default=1, ge=0, description="build processes; 0 = in the calling process")
    min_chars: int = Field(default=16, ge=0, description="drop documents shorter than this after cleaning")
    max_chars: int | None = Field(default=None, ge=1, description="drop documents longer than this")
    min_mean_line_length: float = Field(default=2.0, ge=0)
    max_mean_line_length: float = Field(default=1000.0, gt=0)
    min_alnum_fraction: float = Field(default=0.25, ge=0, le=1)
    max_repeated_line_fraction: float = Field(default=0.5, ge=0, le=1)
    dedup_exact: bool = True
    dedup_near: bool = True
    near_dup_threshold: float = Field(default=0.8, gt=0, le=1, description="MinHash LSH Jaccard threshold")
    minhash_permutations: int = Field(default=128, ge=16)
    redact_pii: bool = True
    strict: bool = False


# The linear layers of a block that LoRA adapters can go on (their names in every supported architecture).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraConfig(Section):
    """Low-rank adapters on chosen linear layers; every base weight stays frozen."""

    rank: int = Field(default=8, ge=1, description="rank r of each adapter's A (r x in) and B (out x r)")
    alpha: float = Field(default=16.0, gt=0, description="the adapter's output is scaled by alpha / rank")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout on the adapter's input")
    targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="linear layers that get adapters: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj",
    )
    base_weights: Literal["auto", "int8"] = Field(
        default="auto",
        description='how the frozen base projections are stored: "auto" in the training dtype, "int8" as int8 codes '
        "with fp32 per-output-channel scales (QLoRA-style; one process only)",
    )

    @model_validator(mode="after")
    def _check_targets(self) -> LoraConfig:
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown or not self.targets:
            raise ValueError(
                f"targets {unknown or self.targets} names no module; choose from {', '.join(LORA_TARGETS)}"
            )
        return self


class TrainConfig(Section):
    """Optimisation settings for one training run."""

    output_dir: OutputPath = Path("runs/train")
    steps: int = Field(default=1000, ge=1)
    batch_size: int = Field(
        default=8,
        ge=1,
        description="sequences per micro-batch across all data-parallel ranks (the layout never changes the math)",
    )
    grad_accum_steps: int = Field(default=1, ge=1)
    seq_len: int = Field(default=256, ge=2)
    lr: float = Field(default=3e-4, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=100, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0)
    grad_clip: float = Field(default=1.0, ge=0, description="global gradient-norm limit; 0 disables clipping")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "xpu", "mps", "hpu", "npu", "mtia"] = Field(
        default="auto", description="auto = the accelerator PyTorch finds (torch.accelerator), else the CPU"
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="compute dtype: auto = bf16 on an accelerator, fp32 on CPU"
    )
    log_every: int = Field(default=10, ge=1)
    eval_every: int = Field(default=0, ge=0, description="steps between validation passes; 0 = only at the end")
    eval_batches: int = Field(default=8, ge=1)
    max_minutes: float | None = Field(default=None, gt=0, description="stop early after this wall time")
    compile: bool = Field(default=False, description="torch.compile each transformer block")
    optimizer: Literal["adamw", "lamb", "lars"] = "adamw"
    momentum: float = Field(default=0.9, ge=0, lt=1, description="LARS momentum")
    trust_coefficient: float = Field(default=0.001, gt=0, description="LARS trust coefficient (eta)")
    lr_schedule: Literal["cosine", "linear", "constant"] = Field(
        default="cosine", description="decay after warmup, down to min_lr_ratio"
    )
    ac: Literal["none", "full", "selective"] = Field(
        default="none", description="activation checkpointing: none, every block, or keep matmul outputs only"
    )
    cpu_offload: bool = Field(default=False, description="keep sharded parameters and optimizer state in CPU memory")
    collective_timeout_s: float = Field(
        default=600.0, gt=0, description="a collective waiting longer than this fails the rank (then restarts)"
    )
    skip_nonfinite: bool = Field(
        default=True, description="a non-finite loss or gradient norm rolls back instead of updating the model"
    )
    spike_zscore: float = Field(
        default=0.0, ge=0, description="roll back on a loss this many sigma above the window; 0 = off"
    )
    spike_window: int = Field(default=50, ge=2, description="steps in the moving window of the spike check")
    max_rollbacks: int = Field(default=3, ge=0, description="rollbacks allowed before the run stops with an error")
    lora: LoraConfig | None = Field(default=None, description="train adapters only; the base model stays frozen")

    @model_validator(mode="after")
    def _check_warmup(self) -> TrainConfig:
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must not exceed steps ({self.steps})")
        return self


class ParallelConfig(Section):
    """Degrees of each parallel dimension; their product is the world size."""

    dp_replicate: int = Field(default=1, ge=1)
    dp_shard: int = Field(default=-1, ge=-1, description="-1 = every rank not used by the other dimensions")
    tp: int = Field(default=1, ge=1)
    sequence_parallel: bool = True
    pp: int = Field(default=1, ge=1)
    pp_schedule: Literal["gpipe", "1f1b", "interleaved_1f1b"] = "1f1b"
    pp_microbatches: int | None = Field(default=None, ge=1)
    fsdp_reshard_after_forward: Literal["default", "always", "never"] = Field(
        default="default",
        description="free gathered parameters after forward (ZeRO-3, least memory) or keep them for backward "
        "(one all-gather fewer, ZeRO-2-like); default: always, except under pipeline parallelism",
    )
    fsdp_unit_params: int = Field(
        default=10_000_000,
        ge=0,
        description="consecutive blocks share one FSDP unit until it holds this many parameters "
        "(fewer, larger collectives for small blocks; more memory gathered at once); 0 = one unit per block",
    )

    @model_validator(mode="after")
    def _check_shard(self) -> ParallelConfig:
        if self.dp_shard == 0:
            raise ValueError("dp_shard must be -1 (auto) or >= 1")
        return self


class CheckpointConfig(Section):
    """When and where training state is saved."""

    enabled: bool = False
    dir: OutputPath | None = None
    interval: int = Field(default=500, ge=1)
    keep_last: int = Field(default=3, ge=1)
    async_mode: Literal["off", "thread", "process"] = "off"
    keep_every: int = Field(default=0, ge=0, description="also keep every checkpoint whose step is a multiple; 0 = off")


class KBConfig(Section):
    """The knowledge base: where collections live and how they are indexed."""

    path: OutputPath = Path("runs/kb")
    embedding_model: str = "all-MiniLM-L6-v2"
    embedding_multilingual: bool = Field(
        default=False,
        description="the embedding_model folder holds a model that reads Chinese; when false, hybrid search "
        "weights the vector ranking down for Chinese queries",
    )
    index: Literal["flat", "hnsw", "ivf_flat", "ivf_pq"] = "hnsw"
    metric: Literal["cosine", "ip", "l2"] = "cosine"
    backend: Literal["embedded", "milvus"] = "embedded"
    uri: str | None = None
    hnsw_m: int = Field(default=16, ge=2, le=256)
    ef_construction: int = Field(default=200, ge=1)
    ef_search: int = Field(default=64, ge=1)
    nlist: int = Field(default=256, ge=1)
    pq_m: int = Field(default=16, ge=1)
    nprobe: int = Field(default=16, ge=1)
    exact_search_below: int = Field(default=20_000, ge=0)
    checkpoint_rows: int = Field(default=10_000, ge=1)
    chunk_tokens: int = Field(default=256, ge=16)
    chunk_overlap: int = Field(default=32, ge=0)
    embed_batch_size: int = Field(default=64, ge=1)


class ServeConfig(Section):
    """The inference server."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    model_path: ExistingPath | None = None
    max_num_seqs: int = Field(default=64, ge=1)
    max_batch_tokens: int = Field(default=2048, ge=1)
    block_size: int = Field(default=16, ge=1)
    weights: Literal["auto", "fp32", "bf16", "int8", "int4"] = Field(
        default="auto",
        description="format of the projection weights: auto = as the model holds them (on the CPU the built-in "
        "model's own int4 codes); bf16 = bf16 weights under an fp32 model; int8 (per-channel) and int4 (group-wise) "
        "= weight-only quantised, through PyTorch's packed kernels",
    )
    int4_group_size: Literal[32, 64, 128, 256] = Field(
        default=32, description="input features sharing one scale and zero with weights = int4"
    )
    dense_above_rows: int | None = Field(
        default=None,
        ge=0,
        le=4096,
        description="CPU, int4/int8 projections: steps with more rows than this (prompt chunks, large batches) "
        "multiply a float copy of the same weights; default: 8 with weights = auto, 0 (no copy) with int4/int8",
    )
    device: Literal["auto", "cpu", "cuda", "xpu", "mps", "hpu", "npu", "mtia"] = Field(
        default="auto", description="where the model and the paged KV cache live: auto = the accelerator PyTorch finds"
    )
    dtype: Literal["auto", "bf16", "fp16", "fp32", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="weights and KV cache: auto = bf16 on an accelerator (else fp16), fp32 on CPU"
    )
    tensor_parallel: int = Field(
        default=1, ge=1, le=64, description="processes (devices) one model is split over, Megatron-style"
    )
    served_model_name: str | None = None
    model_cache_dir: OutputPath = Path("runs/models")
    max_model_len: int | None = Field(default=None, ge=1)
    kv_cache_mb: int = Field(default=1024, ge=1)
    prefix_caching: bool = True
    compile_decode: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="decode steps padded to static shapes: auto = CUDA graphs on CUDA, the static eager step on "
        "the CPU; on = torch.compile on the CPU too (slow start); off = the dynamic path",
    )
    speculative_tokens: int = Field(
        default=0,
        ge=0,
        le=16,
        description="n-gram (prompt lookup) draft tokens verified per decode step; 0 turns it off",
    )
    speculative_ngram: list[int] = Field(
        default_factory=lambda: [2, 4], description="[shortest, longest] tail of the request the draft proposer matches"
    )
    max_queue: int = Field(default=256, ge=0)
    request_timeout_s: float = Field(default=600.0, gt=0)
    rate_limit_per_minute: int | None = Field(
        default=None, ge=1, description="per API key (per client address for anonymous callers); unset = unlimited"
    )
    max_body_bytes: int = Field(default=4 * 2**20, ge=1024, description="larger request bodies are refused (413)")
    max_prompt_chars: int = Field(
        default=400_000, ge=1, description="characters of prompt (all messages) accepted before any guard check runs"
    )
    max_stop_sequences: int = Field(default=4, ge=0, le=64)
    max_embedding_inputs: int = Field(default=256, ge=1, description="texts one /v1/embeddings request may embed")
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "::1"],
        description="Host header values (and Origin hosts) accepted, against DNS rebinding; '*' accepts any",
    )
    adapters: dict[str, OutputPath] = Field(
        default_factory=dict,
        description="LoRA adapters (PEFT directories, read when the server starts) by name; a request picks one "
        'with "model": "NAME" or "BASE:NAME"',
    )

    @model_validator(mode="before")
    @classmethod
    def _no_plaintext_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_keys" in data:
            raise ValueError(
                "[serve] api_keys (plaintext keys) was removed: API keys live in the guard key ring only. "
                "Migrate each key with `jijian guard add-key keys.toml --user NAME [--role ROLE]`, set "
                '[guard] api_keys = "keys.toml", give the new keys to their users and delete [serve.api_keys]'
            )
        return data

    @model_validator(mode="before")
    @classmethod
    def _quantization_is_weights(cls, data: Any) -> Any:
        # `quantization = "none" | "int8"` was the first name of `weights`; old deploy files keep working.
        if not isinstance(data, dict) or "quantization" not in data:
            return data
        data = dict(data)
        old = data.pop("quantization")
        if old not in ("none", "int8"):
            raise ValueError(f'quantization = {old!r}: use weights = "int8" or "int4" (quantization is its old name)')
        if old == "int8":
            if data.get("weights", "int8") != "int8":
                raise ValueError(f'quantization = "int8" contradicts weights = {data["weights"]!r}; keep only weights')
            data["weights"] = "int8"
        return data

    @model_validator(mode="after")
    def _check_ngram(self) -> ServeConfig:
        if len(self.speculative_ngram) != 2 or not 1 <= self.speculative_ngram[0] <= self.speculative_ngram[1]:
            raise ValueError(
                f"speculative_ngram must be [min, max] with 1 <= min <= max, got {list(self.speculative_ngram)}"
            )
        return self


class GuardConfig(Section):
    """Safety policy applied to requests and responses."""

    injection_threshold: float = Field(default=0.5, ge=0, le=1)
    block_injections: bool = Field(default=True, description="refuse requests flagged as injections")
    redact_pii: bool = Field(default=True, description="redact PII from everything written to logs and the audit log")
    log_prompts: Literal["none", "redacted", "clear"] = Field(
        default="redacted", description="how prompts appear in the audit log; never in clear unless asked"
    )
    redaction_mode: Literal["mask", "hash", "placeholder"] = "placeholder"
    redact_responses: bool = False
    redact_kb_ingestion: bool = False
    leakage_ngram: int = Field(default=8, ge=3, description="words (or CJK characters) per n-gram in the leak check")
    leakage_min_shared: int = Field(default=3, ge=1)
    audit_log: OutputPath | None = None
    audit_key_env: str = Field(
        default="JIJIAN_AUDIT_KEY", min_length=1, description="environment variable holding the audit log's HMAC key"
    )
    audit_key_file: OutputPath | None = Field(
        default=None, description="file holding the audit log's HMAC key (when the environment variable is unset)"
    )
    api_keys: OutputPath | None = Field(
        default=None, description="the key ring (`jijian guard add-key` writes it); missing or empty stops the server"
    )
    allow_anonymous: bool = Field(
        default=False, description="serve requests without an API key as the anonymous principal (public documents)"
    )
    max_audit_field_chars: int = Field(default=16_384, ge=256, description="longer strings in an audit entry are cut")
    role_collections: dict[str, list[str]] = Field(default_factory=dict)
    role_tools: dict[str, list[str]] = Field(default_factory=dict)
    encrypt_at_rest: bool = False
    key_env: str = Field(default="JIJIAN_GUARD_KEY", min_length=1)
    key_file: OutputPath | None = None


class HardwareConfig(Section):
    """The machines a run is planned for, and what they cost."""

    accelerator: str = "cpu"
    devices_per_node: int = Field(default=1, ge=1)
    nodes: int = Field(default=1, ge=1)
    electricity_price_per_kwh: float | None = Field(default=None, ge=0)
    pue: float | None = Field(default=None, ge=1)
    rent_per_device_hour: float | None = Field(default=None, ge=0)
    purchase_price_per_device: float | None = Field(default=None, ge=0)
    amortization_years: float | None = Field(default=None, gt=0)
    currency: str = "CNY"
    peak_tflops: float | None = Field(
        default=None, gt=0, description="dense peak TFLOP/s per device for MFU; default: known GPUs, measured on CPU"
    )


UpStage = Literal["data", "train", "export", "kb", "serve"]


class UpConfig(Section):
    """`jijian up`: which stages build this deployment, where their manifests go, and stage-only inputs."""

    stages: list[UpStage] | None = Field(
        default=None,
        description="stages to build; default: data, train, export when [data] sources is set, kb when "
        "kb_sources is, and serve",
    )
    state_dir: OutputPath = Field(default=Path("runs/up"), description="one manifest per stage, the hash cache")
    tokenizer_sample_mb: float = Field(
        default=6.0,
        gt=0,
        description="text read from the data sources to train a tokenizer when [tokenizer] path is unset",
    )
    train_minutes: float | None = Field(
        default=None, gt=0, description="calibrate [train] steps so the whole schedule fits this wall time here"
    )
    export_dir: OutputPath | None = Field(default=None, description="exported HF model; default <train output>/export")
    sample_prompt: str | None = Field(default=None, description="continued by the exported model after export")
    kb_collection: str = Field(default="docs", min_length=1, description="the collection the kb stage builds")
    kb_sources: list[str] = Field(
        default_factory=list, description="files or directories to ingest, or 'python-stdlib-docs'"
    )
    kb_max_docs: int = Field(
        default=3000, ge=1, description="docstrings taken by the 'python-stdlib-docs' source (modules first, then APIs)"
    )
    serve_model: Literal["serve", "export"] = Field(
        default="serve", description="serve [serve] model_path (or SmolLM2), or the model the export stage wrote"
    )
    question: str | None = Field(
        default=None, description="asked through the HTTP server, with RAG, by the serve stage"
    )
    question_max_tokens: int = Field(default=96, ge=1)
    rag_top_k: int = Field(default=3, ge=1)
    nnodes: int = Field(default=1, ge=1, description="nodes the train stage runs on (torchrun --nnodes)")
    nproc_per_node: int | None = Field(default=None, ge=1, description="ranks per node; default: GPUs, or the layout")
    rdzv_endpoint: str | None = Field(default=None, description="HOST:PORT of torchrun's rendezvous when nnodes > 1")
    max_restarts: int = Field(default=0, ge=0, description="torchrun restarts of the training job after a lost rank")

    @model_validator(mode="after")
    def _check_stages(self) -> UpConfig:
        if self.stages is not None and len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages lists a stage twice: {self.stages}")
        return self


class DeployConfig(Section):
    """A whole deployment, as described by one `deploy.toml`."""

    name: str = "jijian"
    model: ModelConfig = Field(default_factory=lambda: ModelConfig.model_validate({"preset": "llama-tiny"}))
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    kb: KBConfig = Field(default_factory=KBConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    hardware: HardwareConfig = Field(default_factory=HardwareConfig)
    up: UpConfig = Field(default_factory=UpConfig)
