"""`jijian`: one command for the whole stack (config, tokenizer, train, generate, quickstart)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from jijian.cli.common import err_console, fail, reports_errors
from jijian.cli.data import data_app
from jijian.cli.eval import eval_app
from jijian.cli.guard import guard_app
from jijian.cli.kb import kb_app
from jijian.cli.plan import plan_app
from jijian.cli.serve import model_app, serve_app
from jijian.cli.train import train_app
from jijian.cli.up import up_app

app = typer.Typer(
    help="jijian (基建): infrastructure for large language models — train, feed, plan, retrieve, serve, guard.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Validate deploy.toml files or write a commented example.", no_args_is_help=True)
tokenizer_app = typer.Typer(help="Train byte-level BPE tokenizers.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(tokenizer_app, name="tokenizer")

# Sub-command groups that live in their own modules (jijian.cli.<area>), one line each:
app.add_typer(train_app, name="train")
app.add_typer(plan_app, name="plan")
app.add_typer(guard_app, name="guard")
app.add_typer(data_app, name="data")
app.add_typer(kb_app, name="kb")
app.add_typer(serve_app, name="serve")
app.add_typer(model_app, name="model")
app.add_typer(up_app, name="up")
app.add_typer(eval_app, name="eval")


@config_app.command("check")
@reports_errors
def config_check(path: Annotated[Path, typer.Argument(help="deploy.toml to validate")]) -> None:
    """Validate a deploy.toml and print the resolved config (defaults filled, paths absolute)."""
    from jijian.config import dump_config, load_config

    config = load_config(path)
    print(dump_config(config), end="")
    err_console.print(f"[green]ok:[/] {path} is valid")


@config_app.command("init")
@reports_errors
def config_init(
    path: Annotated[Path, typer.Argument(help="where to write the example")] = Path("deploy.toml"),
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
) -> None:
    """Write a commented example deploy.toml."""
    from importlib.resources import files

    if path.exists() and not force:
        err_console.print(f"[bold red]error:[/] {path} exists; pass --force to overwrite it")
        raise typer.Exit(code=2)
    text = files("jijian.config").joinpath("example.toml").read_text(encoding="utf-8")
    path.write_text(text, encoding="utf-8")
    err_console.print(f"wrote {path}; check it with [bold]jijian config check {path}[/]")


@tokenizer_app.command("train")
@reports_errors
def tokenizer_train(
    paths: Annotated[list[Path], typer.Argument(help="text files, directories or globs to learn from")],
    vocab_size: Annotated[int, typer.Option(help="vocabulary size, special tokens included")] = 8192,
    out: Annotated[Path, typer.Option(help="directory to write tokenizer.json into")] = Path("tokenizer"),
    min_frequency: Annotated[int, typer.Option(help="minimum pair frequency to merge")] = 2,
    text_field: Annotated[str, typer.Option(help="field holding the text in .jsonl files")] = "text",
) -> None:
    """Train a byte-level BPE tokenizer (with BOS/EOS/PAD and a chat template) and save it."""
    from jijian.data import read_documents, resolve_sources
    from jijian.model.tokenizer import train_tokenizer

    files = resolve_sources([str(p) for p in paths])
    if not files:
        err_console.print("[bold red]error:[/] no input files found")
        raise typer.Exit(code=2)
    try:
        tokenizer = train_tokenizer(
            read_documents(files, text_field), vocab_size, min_frequency=min_frequency, show_progress=True
        )
    except ValueError as exc:  # bad --vocab-size / --min-frequency
        err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(code=2) from None
    tokenizer.save(out)
    err_console.print(f"trained on {len(files)} files: vocab {tokenizer.vocab_size} -> {out / 'tokenizer.json'}")


@app.command()
@reports_errors
def generate(
    model_dir: Annotated[Path, typer.Argument(help="Hugging Face-format model directory")],
    prompt: Annotated[str, typer.Argument(help="text to continue")],
    max_new_tokens: Annotated[int, typer.Option(help="tokens to generate at most")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    top_k: Annotated[int | None, typer.Option(help="sample from the k most likely tokens")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed for sampling")] = None,
) -> None:
    """Continue a prompt with a saved model (greedy by default)."""
    from jijian.model import generate as generate_tokens
    from jijian.model.hf import load_hf

    model, tokenizer = load_hf(model_dir)
    if tokenizer is None:
        err_console.print(f"[bold red]error:[/] {model_dir} has no tokenizer.json")
        raise typer.Exit(code=2)
    ids = tokenizer.encode(prompt, add_bos=True)
    new = generate_tokens(
        model, ids, max_new_tokens, temperature=temperature, top_k=top_k, eos_id=tokenizer.eos_id, seed=seed
    )
    print(prompt + tokenizer.decode(new))


@app.command()
@reports_errors
def quickstart(
    config: Annotated[
        Path | None, typer.Option(help="the deployment to build; default: the bundled examples/quickstart.toml")
    ] = None,
    minutes: Annotated[
        float | None, typer.Option(help="training time in minutes (sets the step count); default: the config's")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="a fixed number of training steps instead of --minutes")] = None,
) -> None:
    """`jijian up examples/quickstart.toml`: data, llama-tiny, export, docstring KB, RAG answer; then a summary."""
    from jijian.cli.quickstart import bundled_example, run_quickstart
    from jijian.up.runner import StageFailed

    path = config or bundled_example()
    overrides: dict[str, Any] = {}
    if minutes is not None:
        overrides["up"] = {"train_minutes": minutes}
    if steps is not None:
        overrides["up"] = {"train_minutes": None}
        overrides["train"] = {"steps": steps, "warmup_steps": min(20, steps)}
    try:
        run_quickstart(path, err_console, overrides or None)
    except StageFailed as exc:
        raise fail(f"{exc}\nrun `jijian quickstart` again to continue from {exc.stage}", code=1) from None


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
