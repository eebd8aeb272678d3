"""`jijian serve` and `jijian model` from the command line, and the server built from deploy.toml."""

from __future__ import annotations

import httpx
from test_api import KEY, make_app, running_server
from typer.testing import CliRunner

from jijian.cli.main import app
from jijian.config import load_config
from jijian.serve.server import build_server

runner = CliRunner()


def test_serve_bench_sweeps_concurrency_and_writes_a_plot(small_model, tmp_path):
    model, tokenizer = small_model
    with running_server(make_app(model, tokenizer)) as url:
        plot = tmp_path / "bench.png"
        args = ["serve", "bench", "--url", url, "--api-key", KEY, "--concurrency", "1,4", "--requests", "4"]
        result = runner.invoke(app, [*args, "--max-tokens", "5", "--prompt-words", "2,20", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [r[0] for r in rows] == ["1", "4"]
    assert all(r[2] == "0" and int(r[3]) == 4 * 5 and float(r[4]) > 0 for r in rows)  # no errors, all tokens
    assert "the server's usage: 8 requests" in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_serve_with_a_bad_config_exits_2(tmp_path):
    config = tmp_path / "deploy.toml"
    config.write_text("[serve]\nport = 99999\n")
    result = runner.invoke(app, ["serve", str(config)])
    assert result.exit_code == 2
    assert "port" in result.output


def test_bench_with_bad_levels_exits_2():
    result = runner.invoke(app, ["serve", "bench", "--concurrency", "0,x"])
    assert result.exit_code == 2


def test_import_gguf_of_a_missing_file_exits_2(tmp_path):
    result = runner.invoke(app, ["model", "import-gguf", str(tmp_path / "none.gguf"), "--to", str(tmp_path / "out")])
    assert result.exit_code == 2 and "none.gguf" in result.output


def test_server_from_deploy_toml_serves_with_keys_and_int8(small_model_dir, tmp_path):
    from jijian.guard.apikeys import add_key

    key = add_key(tmp_path / "keys.toml", "bob")
    text = f"""
[serve]
model_path = "{small_model_dir}"
served_model_name = "tiny"
quantization = "int8"
kv_cache_mb = 4
[guard]
api_keys = "keys.toml"
[hardware]
rent_per_device_hour = 3.0
"""
    (tmp_path / "deploy.toml").write_text(text)
    config = load_config(tmp_path / "deploy.toml")
    server = build_server(config)
    assert server.settings.price_per_hour == 3.0
    assert server.engine.config.num_blocks > 0
    with running_server(server.app) as url:
        headers = {"Authorization": f"Bearer {key}"}
        reply = httpx.post(
            url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 3}, headers=headers
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] >= 1
        assert httpx.get(url + "/v1/models").status_code == 401
