"""`jijian serve bench` against a fake OpenAI-compatible server: token counting with and without `usage`,
workload replay, and workload-file errors that name the file and line."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from jijian.cli.main import app
from jijian.serve.loadgen import (
    MAX_OUTPUT_TOKENS,
    WorkloadError,
    WorkloadRequest,
    load_workload,
    sweep,
    synthetic_workload,
)

runner = CliRunner()

# Each streamed piece is several tokens of the test tokenizer, so counting chunks and counting tokens differ.
PIECES = [" def handle_request(self, path):", " return 你好, 世界", "\n    raise ValueError('x')", " # ok"]


class FakeServer:
    """Streams exactly `max_tokens` text chunks per request (cycling PIECES), with llama.cpp's shape by default:
    a role-only first chunk, an empty-content chunk, a finish chunk without text, and no `usage`."""

    def __init__(self, usage: int | None = None) -> None:
        self.usage = usage  # completion_tokens the final chunk reports; None: no usage at all
        self.bodies: list[tuple[str, dict]] = []
        self.lock = threading.Lock()

    def pieces(self, max_tokens: int) -> list[str]:
        return [PIECES[i % len(PIECES)] for i in range(max_tokens)]

    def chunks(self, path: str, max_tokens: int) -> Iterator[dict]:
        chat = path == "/v1/chat/completions"

        def chunk(text: str | None, finish: str | None = None) -> dict:
            if chat:
                return {"object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}  # fmt: skip
            return {"object": "text_completion", "choices": [{"index": 0, "text": text or "", "finish_reason": finish}]}

        if chat:
            yield {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
        yield chunk("")
        for piece in self.pieces(max_tokens):
            yield chunk(piece)
        last = chunk(None, "length")
        if self.usage is not None:
            last["usage"] = {"prompt_tokens": 3, "completion_tokens": self.usage, "total_tokens": 3 + self.usage}
        yield last

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the connection closes after each response: the stream's end

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                data = json.dumps({"object": "list", "data": [{"id": "fake-model", "object": "model"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.bodies.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for chunk in fake.chunks(self.path, body["max_tokens"]):
                    self.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\r\n\r\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\r\n\r\n")

        return Handler


@contextlib.contextmanager
def serving(fake: FakeServer) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def table_rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines() if line.strip() and line.split()[0].isdigit()]


def test_without_usage_it_counts_exactly_the_chunks_that_carried_text(tmp_path):
    fake = FakeServer(usage=None)
    workload = [WorkloadRequest(max_tokens=n, prompt="hi") for n in (1, 5, 9)]
    with serving(fake) as url:
        (result,) = sweep(url, "fake-model", workload, [2])
    assert result.errors == 0
    assert result.output_tokens == 1 + 5 + 9
    assert result.counted_by == {"chunks": 3}
    assert len(result.ttft) == 3 and all(t >= 0 for t in result.ttft)
    assert len(result.tpot) == 2  # a one-token request has no time per output token


def test_without_usage_a_tokenizer_counts_the_tokens_of_the_streamed_text(tmp_path, tokenizer):
    fake = FakeServer(usage=None)
    workload = [WorkloadRequest(max_tokens=n, messages=(("user", "你好"),)) for n in (3, 7)]
    expected = sum(len(tokenizer.encode("".join(fake.pieces(n)))) for n in (3, 7))
    assert expected > 3 + 7  # the pieces are several tokens each: a chunk count would be wrong
    with serving(fake) as url:
        (result,) = sweep(url, "fake-model", workload, [1], tokenizer=tokenizer)
    assert result.output_tokens == expected
    assert result.counted_by == {"tokenizer": 2}


def test_the_servers_usage_wins_when_it_is_sent(tokenizer):
    fake = FakeServer(usage=11)
    workload = [WorkloadRequest(max_tokens=4, prompt="hi")] * 3
    with serving(fake) as url:
        (result,) = sweep(url, "fake-model", workload, [3], tokenizer=tokenizer)
    assert result.output_tokens == 3 * 11
    assert result.counted_by == {"usage": 3}


def test_serve_bench_cli_counts_a_usage_less_stream_and_says_how(tmp_path, tokenizer):
    fake = FakeServer(usage=None)
    plot = tmp_path / "bench.png"
    args = ["serve", "bench", "--url", "", "--concurrency", "1,3", "--requests", "6", "--max-tokens", "4"]
    with serving(fake) as url:
        args[3] = url
        by_chunks = runner.invoke(app, [*args, "--plot", str(plot)])
        tokenizer.save(tmp_path / "tok")
        by_tokens = runner.invoke(app, [*args, "--plot", str(plot), "--tokenizer", str(tmp_path / "tok")])
    assert by_chunks.exit_code == 0, by_chunks.output
    rows = table_rows(by_chunks.stdout)
    assert [r[0] for r in rows] == ["1", "3"]
    assert all(r[2] == "0" and r[3] == str(6 * 4) and float(r[4]) > 0 for r in rows)  # no errors, 24 tokens
    assert "counting streamed chunks with text (server sent no usage, no --tokenizer): 12 requests" in by_chunks.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert by_tokens.exit_code == 0, by_tokens.output
    expected = 6 * len(tokenizer.encode("".join(fake.pieces(4))))
    assert all(r[3] == str(expected) for r in table_rows(by_tokens.stdout))
    assert "tokenising the streamed text (server sent no usage): 12 requests" in by_tokens.stdout
    assert all(body["model"] == "fake-model" and body["ignore_eos"] is True for _, body in fake.bodies)


def test_a_workload_file_is_replayed_request_for_request(tmp_path):
    path = tmp_path / "work.jsonl"
    lines = [
        {"prompt": "Once upon a time", "max_tokens": 3},
        {"messages": [{"role": "system", "content": "简洁"}, {"role": "user", "content": "北京在哪里？"}]},
    ]
    path.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n\n", encoding="utf-8")
    fake = FakeServer(usage=None)
    with serving(fake) as url:
        result = runner.invoke(
            app, ["serve", "bench", "--url", url, "--workload", str(path), "--concurrency", "1,2", "--max-tokens", "5",
                  "--no-ignore-eos", "--plot", str(tmp_path / "p.png")],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [r[3] for r in table_rows(result.stdout)] == ["8", "8"]  # 3 + the default 5, at both levels
    completions = [b for p, b in fake.bodies if p == "/v1/completions"]
    chats = [b for p, b in fake.bodies if p == "/v1/chat/completions"]
    assert len(completions) == len(chats) == 2
    assert all(b["prompt"] == "Once upon a time" and b["max_tokens"] == 3 for b in completions)
    assert all(b["messages"] == lines[1]["messages"] and b["max_tokens"] == 5 for b in chats)
    assert all(b["stream"] is True and b["temperature"] == 0 and "ignore_eos" not in b for _, b in fake.bodies)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "must be a JSON object"),
        ('{"prompt": "x", "max_token": 3}', "unknown field 'max_token'"),
        ('{"prompt": "x", "messages": [{"role": "user", "content": "y"}]}', "exactly one of 'prompt'"),
        ("{}", "exactly one of 'prompt'"),
        ('{"prompt": ""}', "prompt must be a string of 1 to"),
        ('{"prompt": "x", "max_tokens": 0}', "max_tokens must be an integer from 1"),
        (f'{{"prompt": "x", "max_tokens": {MAX_OUTPUT_TOKENS + 1}}}', "max_tokens must be an integer from 1"),
        ('{"prompt": "x", "max_tokens": true}', "max_tokens must be an integer"),
        ('{"messages": []}', "messages must be a list of 1 to"),
        ('{"messages": [{"role": "robot", "content": "y"}]}', "messages[0].role must be one of"),
        ('{"messages": [{"role": "user", "content": 3}]}', "messages[0].content must be a string"),
        ('{"messages": [{"role": "user"}]}', "messages[0] must be an object with exactly"),
    ],
)
def test_a_bad_workload_line_is_named_by_file_and_line(tmp_path, line, message):
    path = tmp_path / "work.jsonl"
    path.write_text('{"prompt": "fine", "max_tokens": 2}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(WorkloadError) as caught:
        load_workload(path, default_max_tokens=4)
    assert f"{path}:3: " in str(caught.value)
    assert message in str(caught.value)


def test_workload_file_errors_exit_2_before_any_request(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'{"prompt": "ok"}\n\xff\xfe\n')
    cases = [(empty, "the workload has no requests"), (binary, f"{binary}:2: not UTF-8"),
             (tmp_path / "missing.jsonl", "no such workload file")]  # fmt: skip
    for path, message in cases:
        # An unreachable URL: the file is checked first, so no connection is ever tried.
        result = runner.invoke(app, ["serve", "bench", "--url", "http://127.0.0.1:9", "--workload", str(path)])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split())


def test_a_line_without_max_tokens_needs_a_default(tmp_path):
    path = tmp_path / "work.jsonl"
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(WorkloadError, match=r"work\.jsonl:1: max_tokens is missing"):
        load_workload(path)
    assert load_workload(path, default_max_tokens=7) == [WorkloadRequest(max_tokens=7, prompt="x")]


def test_the_synthetic_workload_varies_prompt_length_within_bounds():
    workload = synthetic_workload(20, 8, (2, 6))
    lengths = {len(r.prompt.split()) for r in workload}
    assert min(lengths) >= 2 and max(lengths) <= 6 and len(lengths) > 1
    assert all(r.max_tokens == 8 and r.endpoint() == "/v1/completions" for r in workload)
