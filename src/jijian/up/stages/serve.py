"""Stage `serve`: load the served model into the real server and, when asked, answer a question with RAG."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jijian.config import DeployConfig
from jijian.up.paths import answer_path, export_dir
from jijian.up.stage import StageContext, StageError, section

if TYPE_CHECKING:
    from jijian.guard.http_auth import HttpAuth


def served_config(config: DeployConfig) -> DeployConfig:
    """The config the server runs with: [serve] as written, or pointing at the export stage's model."""
    if config.up.serve_model != "export":
        return config
    return config.model_copy(update={"serve": config.serve.model_copy(update={"model_path": export_dir(config)})})


class ServeStage:
    """Check that the model loads and the server answers; records the answer with its citations."""

    name = "serve"

    def upstream(self, config: DeployConfig, stages: tuple[str, ...]) -> list[str]:
        """The knowledge base it retrieves from, and the exported model when that is what it serves."""
        wanted = ["export"] if config.up.serve_model == "export" else []
        return [s for s in ("kb", *wanted) if s in stages]

    def config_sections(self, config: DeployConfig) -> dict[str, Any]:
        """[serve], [guard] and [kb] (retrieval), and the sample question."""
        return {
            "serve": section(config, "serve"),
            "guard": section(config, "guard"),
            "kb": section(config, "kb"),
            "up.serve": section(config, "up", "serve_model", "question", "question_max_tokens", "rag_top_k"),
            "up.kb_collection": config.up.kb_collection,
        }

    def inputs(self, config: DeployConfig, base: Path) -> list[Path]:
        """A model named by [serve] model_path (the exported one is the export stage's output)."""
        if config.up.serve_model == "serve" and config.serve.model_path is not None:
            return [config.serve.model_path]
        return []

    def outputs(self, config: DeployConfig) -> list[Path]:
        """The record of what was served and answered."""
        return [answer_path(config)]

    def run(self, ctx: StageContext) -> dict[str, Any]:
        """Build the server (loading the model), ask the question over HTTP, write the record."""
        from jijian.files import write_json_atomic
        from jijian.serve.server import build_server, serve_in_thread

        config = served_config(ctx.config)
        model_path = config.serve.model_path
        if config.up.serve_model == "export" and (model_path is None or not (model_path / "config.json").is_file()):
            raise StageError(f"[up] serve_model = 'export' but {config.serve.model_path} holds no exported model")
        started = time.perf_counter()
        auth, stage_key = stage_auth(config)
        server = build_server(config, auth=auth)
        record: dict[str, Any] = {
            "model": server.settings.model_name,
            "model_dir": str(server.model_dir),
            "load_seconds": round(time.perf_counter() - started, 1),
        }
        ctx.console.print(f"served model {record['model']} loads ({record['model_dir']})")
        question = config.up.question
        if question:
            with serve_in_thread(server.app) as url:
                # With adapters the question goes to the first one: it is what the deployment was tuned for.
                asked = next(iter(config.serve.adapters), record["model"])
                record.update(ask(url, asked, question, config, stage_key))
                record["asked_model"] = asked
            ctx.console.print(f"[bold]Q:[/] {question}\n[bold]A:[/] {record['answer']}", highlight=False)
            for citation in record["citations"]:
                ctx.console.print(
                    f"  [{citation['index']}] {citation['id']}  ({citation['source']})", markup=False, highlight=False
                )
        record["seconds"] = round(time.perf_counter() - started, 1)
        path = answer_path(config)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, record)
        return record


def stage_auth(config: DeployConfig) -> tuple[HttpAuth, str]:
    """The deployment's key ring (a named file is checked as `jijian serve` checks it) plus a key for this stage.

    The stage key lives only in memory for this run and authenticates as `jijian-up` without roles,
    so the sample answer retrieves only what an ordinary caller may read. Without `[guard] api_keys`
    the stage key is the only one: the stage's server listens on loopback for one question.
    """
    from jijian.guard.apikeys import KEY_PREFIX, KeyEntry, KeyRing, key_digest
    from jijian.guard.http_auth import HttpAuth, keyring_from_config
    from jijian.guard.principals import Principal

    ring = keyring_from_config(config.guard) if config.guard.api_keys is not None else KeyRing()
    stage_key = KEY_PREFIX + secrets.token_urlsafe(32)
    entries = [*ring.entries, KeyEntry(Principal("jijian-up"), key_digest(stage_key))]
    auth = HttpAuth(KeyRing(entries), allow_anonymous=config.guard.allow_anonymous,
                    rate_limit_per_minute=config.serve.rate_limit_per_minute)  # fmt: skip
    return auth, stage_key


def ask(url: str, model: str, question: str, config: DeployConfig, api_key: str) -> dict[str, Any]:
    """One chat completion through the HTTP API, with retrieval from [up] kb_collection when it exists."""
    import httpx

    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": config.up.question_max_tokens,
        "temperature": 0,
    }
    if (config.kb.path / config.up.kb_collection / "collection.json").is_file():
        body["rag"] = {"collection": config.up.kb_collection, "top_k": config.up.rag_top_k}
    headers = {"Authorization": f"Bearer {api_key}"}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=600)
    if response.status_code != 200:
        raise StageError(f"the server answered HTTP {response.status_code}: {response.text[:300]}")
    answer = response.json()
    return {
        "question": question,
        "answer": answer["choices"][0]["message"]["content"],
        "citations": answer.get("citations", []),
        "rag_collection": body.get("rag", {}).get("collection"),
    }
