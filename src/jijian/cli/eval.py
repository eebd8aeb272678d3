"""`jijian eval ...`: measure retrieval quality, held-out perplexity and RAG citations; print a table, write JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from jijian.cli.common import err_console, out_console, reports_errors
from jijian.cli.kb import ConfigOption, EmbedOption, PathOption, _kb_config, _kb_key

eval_app = typer.Typer(
    help="Quality measurement: retrieval (recall, MRR, nDCG), held-out perplexity, RAG citations.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

OutOption = Annotated[Path | None, typer.Option("--out", help="JSON report path (default runs/eval/<kind>.json)")]
QuestionsArgument = Annotated[
    str, typer.Argument(help="questions .jsonl ({query, relevant}); or a shipped set: stdlib-en, zh")
]


def write_report(report: dict[str, Any], out: Path | None, kind: str) -> Path:
    """Write `report` as JSON (atomically) and return where."""
    path = out or Path("runs/eval") / f"{kind}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A plain table on stdout."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    out_console.print(table)


@eval_app.command("retrieval")
@reports_errors
def retrieval(
    collection: Annotated[str, typer.Argument(help="collection to search (not modified)")],
    questions: QuestionsArgument,
    config: ConfigOption = None,
    path: PathOption = None,
    embedding_model: EmbedOption = None,
    out: OutOption = None,
) -> None:
    """recall@1/5/10, MRR and nDCG@10 of vector, lexical and hybrid search over labelled questions."""
    from jijian.eval.questions import check_ids, load_questions, resolve
    from jijian.eval.retrieval import evaluate_retrieval
    from jijian.kb.backend import open_knowledge_base
    from jijian.kb.embed import load_embedder

    questions_path = resolve(questions)
    labelled = load_questions(questions_path)
    cfg = _kb_config(config, path, embedding_model)
    kb = open_knowledge_base(cfg, _kb_key(config))
    try:
        target = kb.collection(collection)
        check_ids(labelled, target.ids(), questions_path, collection)
        embedder = load_embedder(cfg.embedding_model, cfg.embed_batch_size, cfg.embedding_multilingual)
        report = evaluate_retrieval(target, embedder, labelled)
    finally:
        kb.close()
    report["questions_file"] = str(questions_path)
    metrics = ["recall@1", "recall@5", "recall@10", "mrr", "ndcg@10"]
    print_table(
        f"{collection}: {len(labelled)} questions ({questions_path.name}, {embedder.name})",
        ["mode", *metrics],
        [[mode, *(f"{values[m]:.3f}" for m in metrics)] for mode, values in report["modes"].items()],
    )
    err_console.print(f"wrote {write_report(report, out, 'retrieval')}")


@eval_app.command("perplexity")
@reports_errors
def perplexity(
    model: Annotated[Path, typer.Argument(help="model directory (HF format, with tokenizer.json)")],
    data: Annotated[Path, typer.Argument(help="packed dataset directory (jijian data build)")],
    split: Annotated[str, typer.Option(help="the held-out split to read")] = "val",
    seq_len: Annotated[int | None, typer.Option(min=1, help="window length (default: the model's)")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 4,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="stop after about this many tokens")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 ...")] = "cpu",
    out: OutOption = None,
) -> None:
    """Held-out perplexity of a model on the validation split of packed shards."""
    from jijian.eval.perplexity import evaluate_perplexity

    report = evaluate_perplexity(
        model, data, split=split, seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens, device=device
    )
    print_table(
        f"{model} on {data} ({split})",
        ["tokens", "seq_len", "loss", "perplexity", "seconds"],
        [[
            str(report["tokens"]), str(report["seq_len"]), f"{report['loss']:.4f}",
            f"{report['perplexity']:.3f}", f"{report['seconds']:.1f}",
        ]],
    )  # fmt: skip
    err_console.print(f"wrote {write_report(report, out, 'perplexity')}")


@eval_app.command("rag")
@reports_errors
def rag(
    collection: Annotated[str, typer.Argument(help="collection the server retrieves from")],
    questions: QuestionsArgument,
    url: Annotated[str, typer.Option(help="base URL of the OpenAI-compatible server")] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None, typer.Option(envvar="JIJIAN_API_KEY", help="bearer key (or env JIJIAN_API_KEY)")
    ] = None,
    model: Annotated[str | None, typer.Option(help="model name to send")] = None,
    top_k: Annotated[int, typer.Option(min=1, max=50, help="passages retrieved per question")] = 4,
    max_tokens: Annotated[int, typer.Option(min=1, help="answer length per question")] = 64,
    limit: Annotated[int | None, typer.Option(min=1, help="ask only the first N questions")] = None,
    timeout: Annotated[float, typer.Option(min=1.0, help="seconds per request")] = 300.0,
    out: OutOption = None,
) -> None:
    """Ask the questions through a server with RAG; score whether the cited passages include a relevant one."""
    import httpx

    from jijian.eval.questions import load_questions, resolve
    from jijian.eval.rag import evaluate_rag

    questions_path = resolve(questions)
    labelled = load_questions(questions_path)[:limit]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=timeout) as client:
        report = evaluate_rag(client, labelled, collection=collection, top_k=top_k, model=model, max_tokens=max_tokens)
    report["questions_file"] = str(questions_path)
    print_table(
        f"RAG through {url}: {collection}, {report['questions']} questions",
        ["cited a relevant passage", "MRR of first relevant citation", "seconds"],
        [
            [
                f"{report['cited_relevant']:.3f}",
                f"{report['first_relevant_citation_mrr']:.3f}",
                f"{report['seconds']:.1f}",
            ]
        ],
    )
    err_console.print(f"wrote {write_report(report, out, 'rag')}")
