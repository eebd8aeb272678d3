"""`jijian data`: build packed shards from raw sources, and inspect a built dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from jijian.cli.common import err_console, fail, reports_errors

data_app = typer.Typer(
    help="Clean, de-duplicate, tokenise and pack training data into shards; inspect the result.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@data_app.command("build")
@reports_errors
def build(
    config: Annotated[Path | None, typer.Argument(help="deploy.toml whose [data] and [tokenizer] to use")] = None,
    source: Annotated[
        list[str] | None, typer.Option("--source", "-s", help="file, directory, glob or URL (repeatable)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output directory (default [data].output_dir)")] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="tokenizer.json or its directory")] = None,
    workers: Annotated[int | None, typer.Option(help="build processes (0 = in this process)")] = None,
    shard_size_mb: Annotated[float | None, typer.Option(help="size of each shard in MB")] = None,
    near_dup_threshold: Annotated[float | None, typer.Option(help="MinHash LSH Jaccard threshold")] = None,
    validation_fraction: Annotated[float | None, typer.Option(help="share of documents held out")] = None,
    text_field: Annotated[str | None, typer.Option(help="JSONL field / Parquet column holding the text")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="stop at the first bad file or record")] = False,
    no_pii: Annotated[bool, typer.Option("--no-pii", help="do not redact e-mail addresses and phone numbers")] = False,
    force: Annotated[bool, typer.Option("--force", help="rebuild from scratch even if finished or resumable")] = False,
) -> None:
    """Build (or resume) the packed dataset; prints the JSON statistics report on stdout."""
    from jijian.config import DataConfig, DeployConfig, load_config
    from jijian.data import build_dataset
    from jijian.model.tokenizer import Tokenizer
    from jijian.train.run import load_tokenizer

    deploy = load_config(config) if config is not None else DeployConfig()
    overrides = {
        "sources": source or None,
        "output_dir": out.resolve() if out is not None else None,
        "workers": workers,
        "shard_size_mb": shard_size_mb,
        "near_dup_threshold": near_dup_threshold,
        "validation_fraction": validation_fraction,
        "text_field": text_field,
        "strict": strict or None,
        "redact_pii": False if no_pii else None,
    }
    fields = {**deploy.data.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    data = DataConfig.model_validate(fields, strict=False)
    if tokenizer is not None:
        tok = Tokenizer.load(tokenizer)
    elif config is not None:
        tok = load_tokenizer(deploy)
    else:
        raise fail("name a tokenizer: --tokenizer PATH, or a deploy.toml with [tokenizer] path")
    base_dir = config.resolve().parent if config is not None and not source else None
    result = build_dataset(data, tok, console=err_console, force=force, base_dir=base_dir)
    totals = result.manifest["stats"]["totals"]
    if result.reused:
        err_console.print(f"up to date: {result.directory} (use --force to rebuild)")
    else:
        mb_per_s = result.input_bytes / 1e6 / max(result.elapsed_s, 1e-9)
        resumed = f", resumed after {result.resumed_shards} finished shards" if result.resumed_shards else ""
        err_console.print(
            f"built {result.directory}: {totals['kept_documents']:,} documents, {totals['train_tokens']:,} train + "
            f"{totals['val_tokens']:,} validation tokens; {totals['exact_duplicates']} exact and "
            f"{totals['near_duplicates']} near duplicates, {totals['filtered']} filtered, "
            f"{totals['read_errors']} unreadable records ({mb_per_s:.1f} MB/s{resumed})"
        )
    if totals["read_errors"]:
        for line in result.manifest["stats"]["errors"][:5]:
            err_console.print(f"[yellow]skipped:[/] {line}", markup=True, highlight=False, soft_wrap=True)
    print(json.dumps(result.manifest["stats"], indent=2))


@data_app.command("inspect")
@reports_errors
def inspect(
    directory: Annotated[Path, typer.Argument(help="a built dataset directory")],
    samples: Annotated[int, typer.Option(help="decoded documents to show per split")] = 3,
    verify: Annotated[bool, typer.Option("--verify", help="re-check every shard's sha256")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Token counts, shard list, filter and duplicate statistics, and decoded samples of a built dataset."""
    from rich.table import Table

    from jijian.cli.common import out_console
    from jijian.data.inspect import describe_dataset

    summary = describe_dataset(directory, samples=samples, verify=verify)
    if as_json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        stats, splits = summary["stats"], summary["splits"]
        totals = Table(title=f"dataset {directory}", show_header=False)
        totals.add_row(
            "tokenizer", f"{summary['tokenizer']['fingerprint'][:16]}… (vocab {summary['tokenizer']['vocab_size']})"
        )
        totals.add_row("token dtype / shard size", f"{summary['dtype']} / {summary['shard_tokens']:,} tokens")
        for split, info in splits.items():
            totals.add_row(
                f"{split}", f"{info['tokens']:,} tokens, {info['documents']:,} documents, {len(info['shards'])} shards"
            )
        totals.add_row(
            "input",
            f"{stats['input_files']:,} files, {stats['input_bytes'] / 1e6:.1f} MB, "
            f"{stats['totals']['records']:,} records",
        )
        for reason, count in sorted(stats["dropped"].items()):
            totals.add_row(f"dropped: {reason}", f"{count:,}")
        totals.add_row("unreadable records", f"{stats['totals']['read_errors']:,}")
        totals.add_row("PII-redacted documents", f"{stats['pii_redacted_documents']:,}")
        out_console.print(totals)
        shards = Table("shard", "tokens", "documents", "sha256", title="shards")
        listed = [s for info in splits.values() for s in info["shards"]]
        for shard in listed[:20]:
            shards.add_row(shard["file"], f"{shard['tokens']:,}", f"{shard['documents']:,}", shard["sha256"][:16] + "…")
        if len(listed) > 20:
            shards.add_row(f"… {len(listed) - 20} more", "", "", "")
        out_console.print(shards)
        for line in stats["errors"][:10]:
            out_console.print(f"unreadable: {line}", markup=False, highlight=False)
        for split, texts in summary["samples"].items():
            for i, text in enumerate(texts):
                out_console.rule(f"{split} sample {i + 1}")
                out_console.print(text, markup=False, highlight=False)
    if summary.get("corrupt_shards"):
        raise fail(f"shards whose bytes no longer match the manifest: {', '.join(summary['corrupt_shards'])}")
    if verify:
        err_console.print("[green]ok:[/] every shard matches its checksum")
