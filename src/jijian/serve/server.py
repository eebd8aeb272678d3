"""Build a ready-to-run server from `deploy.toml`: load (or convert) the model, size the KV cache, wire the API."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from fastapi import FastAPI

from jijian.config import DeployConfig, UserInputError
from jijian.config.schema import ServeConfig
from jijian.guard.crypto import file_reader, is_encrypted, key_from_config
from jijian.guard.http_auth import HttpAuth
from jijian.guard.http_limits import allowed_hosts
from jijian.guard.policy import GuardPolicy
from jijian.model.device import resolve_device, resolve_dtype
from jijian.model.hf import has_quantized_projections, load_hf
from jijian.model.llama import CausalLM
from jijian.model.quantized import Int4Linear, Int8Linear
from jijian.model.tokenizer import Tokenizer
from jijian.serve.api import ApiSettings, Embedder, create_app
from jijian.serve.async_engine import AsyncEngine
from jijian.serve.cpu_threads import release_idle_workers
from jijian.serve.dashboard import DashboardSources
from jijian.serve.engine import EngineConfig, LLMEngine
from jijian.serve.quant import QuantizationError, quantize_model
from jijian.serve.rag import Retriever
from jijian.serve.tensor_parallel import load_shard, shard_model, start_tensor_parallel
from jijian.spec.shape import ModelShape, kv_cache_bytes_per_token

if TYPE_CHECKING:
    from jijian.kb import KnowledgeBase


@dataclass
class Server:
    """Everything `jijian serve` runs: the app plus what it was built from."""

    app: FastAPI
    engine: LLMEngine
    settings: ApiSettings
    model_dir: Path


def kv_block_bytes(model: CausalLM, block_size: int, tensor_parallel: int = 1) -> int:
    """Bytes of keys and values one block holds across all layers on one device (the rank with the most heads)."""
    element = next(model.parameters()).element_size()
    return block_size * kv_cache_bytes_per_token(ModelShape.from_config(model.cfg), element, tensor_parallel)


def load_model(config: DeployConfig, tp_rank: int = 0) -> tuple[CausalLM, Tokenizer, Path]:
    """The served model: `[serve] model_path`, or SmolLM2-135M-Instruct converted once into the cache.

    An encrypted model directory (`jijian train export` with `[guard] encrypt_at_rest`) is decrypted in
    memory with the `[guard]` key; no plaintext copy is written. Under `tensor_parallel = N` this is
    rank `tp_rank`'s shard, on the host: read in slices from the memory-mapped weights, so no rank
    holds the whole model (an encrypted directory, or one imported with quantised projections, is
    read whole and then cut).
    """
    serve = config.serve
    device = resolve_device(serve.device, "serve.device")
    if serve.model_path is not None:
        directory = serve.model_path
    else:
        from jijian.model.gguf import smollm2_model_dir

        # int4 in groups of 32 serves the GGUF's own Q4_1 codes (what llama.cpp multiplies by), not a requantisation.
        # So does "auto" on the CPU: those codes are the model as distributed (the fp32 copy is their expansion),
        # and a CPU decode step is bound by the bytes of weights it reads.
        int4 = serve.weights == "int4" or (serve.weights == "auto" and device.type == "cpu")
        exact = int4 and serve.int4_group_size == 32
        directory = smollm2_model_dir(serve.model_cache_dir, "int4" if exact else "fp32")
    key = key_from_config(config.guard)
    encrypted = any(is_encrypted(path) for path in Path(directory).glob("*") if path.is_file())
    dtype_name = "fp32" if serve.weights == "fp32" and serve.dtype == "auto" else serve.dtype
    dtype = resolve_dtype(dtype_name, device, "serve.dtype")
    if serve.weights == "fp32" and dtype != torch.float32:
        raise QuantizationError(f'serve.weights = "fp32" needs serve.dtype = "fp32" or "auto", not {serve.dtype!r}')
    reader = file_reader(key) if key is not None or encrypted else None
    world = serve.tensor_parallel
    tokenizer: Tokenizer | None
    if world > 1 and reader is None and not has_quantized_projections(Path(directory)):
        model = load_shard(Path(directory), tp_rank, world, dtype)
        tokenizer = Tokenizer.load(directory) if (Path(directory) / "tokenizer.json").is_file() else None
    else:
        # Tensor-parallel ranks read the model on the host and move only their shard to the device.
        model, tokenizer = load_hf(directory, device="cpu" if world > 1 else device, dtype=dtype, read_bytes=reader)
        if world > 1:
            shard_model(model, tp_rank, world)
    if tokenizer is None:
        raise UserInputError(f"[serve] model_path: {directory} has no tokenizer.json; the server needs one")
    if serve.tensor_parallel == 1:  # tensor-parallel ranks quantise their own shard, on their device
        serve_weights(model, config, Path(directory))
    return model, tokenizer, Path(directory)


# Decode steps of up to this many rows stay on the int4 kernel under weights = "auto": measured on SmolLM2
# (2 AVX-512 cores, one thread), int4 beats oneDNN's bf16 matmul up to about 8 rows and loses beyond.
AUTO_DENSE_ABOVE_ROWS = 8


def dense_above_rows(serve: ServeConfig, model: CausalLM) -> int:
    """`[serve] dense_above_rows`, its default resolved: 8 for quantised projections under "auto", else 0."""
    if serve.dense_above_rows is not None:
        return serve.dense_above_rows
    quantized = any(isinstance(m, (Int4Linear, Int8Linear)) for m in model.modules())
    return AUTO_DENSE_ABOVE_ROWS if serve.weights == "auto" and quantized else 0


def serve_weights(model: CausalLM, config: DeployConfig, directory: Path) -> CausalLM:
    """Put the model's projections into `[serve] weights` format (in place)."""
    serve = config.serve
    return quantize_model(model, serve.weights, group_size=serve.int4_group_size, source=str(directory))


def knowledge_base_services(
    config: DeployConfig, policy: GuardPolicy | None
) -> tuple[KnowledgeBase | None, Retriever | None, Embedder | None]:
    """The `[kb]` store with its retriever and embedder, when the knowledge base exists on disk.

    Every restricted record is registered with the guard policy's output leak check.
    """
    kb_config = config.kb
    if kb_config.backend != "milvus" and not kb_config.path.is_dir():
        return None, None, None
    from jijian.kb.backend import open_knowledge_base
    from jijian.kb.embed import load_embedder
    from jijian.serve.knowledge import KnowledgeBaseEmbedder, KnowledgeBaseRetriever, protect_restricted_documents

    kb = open_knowledge_base(kb_config, key_from_config(config.guard))
    if policy is not None and kb_config.backend != "milvus":  # milvus cannot list its restricted records
        protect_restricted_documents(kb, policy)
    embedder = load_embedder(kb_config.embedding_model, kb_config.embed_batch_size, kb_config.embedding_multilingual)
    return kb, KnowledgeBaseRetriever(kb, embedder, policy), KnowledgeBaseEmbedder(embedder)


def build_server(
    config: DeployConfig,
    *,
    retriever: Retriever | None = None,
    embedder: Embedder | None = None,
    policy: GuardPolicy | None = None,
    auth: HttpAuth | None = None,
    with_knowledge_base: bool = True,
) -> Server:
    """Load the model and assemble the engine and FastAPI app that `[serve]` describes.

    The guard policy of `[guard]` runs on every request unless another `policy` is given; the
    knowledge base of `[kb]`, when it exists, serves RAG and /v1/embeddings (its own HTTP API is
    `jijian kb serve`). Callers authenticate through the `[guard] api_keys` key ring (`auth` replaces
    it); a missing or empty key file stops here with an error. The operator dashboard is served at /ui.
    """
    serve = config.serve
    auth = auth if auth is not None else HttpAuth.from_config(config.guard, serve.rate_limit_per_minute)
    policy = policy if policy is not None else GuardPolicy(config.guard, keyring=auth.keyring)
    kb = None
    if with_knowledge_base and retriever is None and embedder is None:
        kb, retriever, embedder = knowledge_base_services(config, policy)
    model, tokenizer, directory = load_model(config)
    max_len = min(serve.max_model_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
    num_blocks = max(1, serve.kv_cache_mb * 2**20 // kv_block_bytes(model, serve.block_size, serve.tensor_parallel))
    if num_blocks * serve.block_size < max_len:
        max_len = num_blocks * serve.block_size  # one request must always fit
    engine_config = EngineConfig(
        max_num_seqs=serve.max_num_seqs,
        max_batch_tokens=serve.max_batch_tokens,
        block_size=serve.block_size,
        num_blocks=num_blocks,
        max_model_len=max_len,
        enable_prefix_caching=serve.prefix_caching,
        num_speculative_tokens=serve.speculative_tokens,
        ngram_range=(serve.speculative_ngram[0], serve.speculative_ngram[1]),
        compile_decode=serve.compile_decode,
        dense_above_rows=dense_above_rows(serve, model),
    )
    runner = None
    if serve.tensor_parallel > 1:
        if serve.adapters:
            raise UserInputError(
                "[serve] adapters are not served with tensor_parallel > 1 yet: merge the adapter "
                "(`jijian train export --merge`) or serve with tensor_parallel = 1"
            )
        runner = start_tensor_parallel(config, model, num_blocks)
    engine = LLMEngine(model, tokenizer, engine_config, adapters=serve.adapters, runner=runner)
    hardware = config.hardware
    price = None
    if hardware.rent_per_device_hour is not None:
        price = hardware.rent_per_device_hour * hardware.devices_per_node * hardware.nodes
    settings = ApiSettings(
        model_name=serve.served_model_name or directory.name,
        request_timeout_s=serve.request_timeout_s,
        price_per_hour=price,
        max_body_bytes=serve.max_body_bytes,
        max_prompt_chars=serve.max_prompt_chars,
        max_stop_sequences=serve.max_stop_sequences,
        max_embedding_inputs=serve.max_embedding_inputs,
        allowed_hosts=allowed_hosts(serve.allowed_hosts, serve.host),
        adapters=list(serve.adapters),
    )
    async_engine = AsyncEngine(engine, max_queue=serve.max_queue)
    app = create_app(
        async_engine,
        tokenizer,
        settings,
        auth=auth,
        retriever=retriever,
        embedder=embedder,
        policy=policy,
        dashboard=DashboardSources.from_config(config, kb),
    )
    return Server(app=app, engine=engine, settings=settings, model_dir=directory)


def run_server(config: DeployConfig) -> None:
    """Serve until interrupted (uvicorn on `[serve] host:port`)."""
    import uvicorn

    # Grad mode is per thread and restored on the way out (a caller in the same process keeps its own).
    with torch.no_grad():
        server = build_server(config)
        # This thread loaded the model and now only runs uvicorn's loop: its idle OpenMP team would put the
        # engine thread's team to sleep between kernels (serve.cpu_threads).
        release_idle_workers()
        print(f"dashboard: http://{config.serve.host}:{config.serve.port}/ui", file=sys.stderr, flush=True)
        try:
            uvicorn.run(server.app, host=config.serve.host, port=config.serve.port, log_level="info")
        finally:
            server.engine.runner.close()  # tensor-parallel workers stop with the server


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", timeout_s: float = 60.0) -> Iterator[str]:
    """Run `app` with uvicorn on a free port in a background thread; yields its base URL, stops it on exit.

    For tests, benchmarks and the quick start, which need a real socket but not a separate process.
    The socket is bound here and handed to uvicorn still held, so no other process can take the port
    between choosing it and listening on it. The calling thread gives back its idle OpenMP workers
    (serve.cpu_threads): CPU kernels it runs while serving slow the engine thread's.
    """
    import uvicorn

    release_idle_workers()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, 0))
        port = listener.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="jijian-uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                raise RuntimeError(f"the server did not start on {host}:{port}")
            time.sleep(0.05)
        try:
            yield f"http://{host}:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout=timeout_s)
