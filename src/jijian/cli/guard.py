"""`jijian guard`: scan text for injections and PII, verify audit logs, manage keys and encrypted files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from jijian.cli.common import err_console, fail, out_console, reports_errors

guard_app = typer.Typer(
    help="Guardrails: injection and PII scans, audit-log verification, API keys, encryption at rest.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _inputs(text: str | None, file: Path | None) -> list[str]:
    if (text is None) == (file is None):
        raise fail("give either TEXT or --file FILE (use --file - for standard input)")
    if text is not None:
        return [text]
    assert file is not None
    content = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    return content.splitlines()


@guard_app.command("scan")
@reports_errors
def scan(
    text: Annotated[str | None, typer.Argument(help="text to scan (one input)")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="scan each line of FILE ('-': stdin)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per input line")] = False,
    threshold: Annotated[
        float | None, typer.Option(help="injection score at which an input is flagged [default: 0.5]", min=0, max=1)
    ] = None,
    config: Annotated[Path | None, typer.Option(help="deploy.toml whose [guard] injection_threshold to use")] = None,
) -> None:
    """Score inputs for prompt injection and list PII spans (type and character offsets)."""
    from rich.markup import escape

    from jijian.guard.injection import DEFAULT_THRESHOLD, InjectionDetector
    from jijian.guard.pii import find_pii

    if threshold is None and config is not None:
        from jijian.config import load_config

        threshold = load_config(config).guard.injection_threshold
    detector = InjectionDetector(DEFAULT_THRESHOLD if threshold is None else threshold)
    for line in _inputs(text, file):
        verdict = detector.scan(line)
        spans = find_pii(line)
        if as_json:
            record = {"injection": verdict.to_json(), "pii": [s.to_json() for s in spans]}
            print(json.dumps(record, ensure_ascii=False), flush=True)
            continue
        label = "[bold red]INJECTION[/]" if verdict.flagged else "[green]ok[/]"
        preview = line if len(line) <= 60 else line[:57] + "..."
        # The input is untrusted text: escape it, or "[/system]" in a prompt would be read as Rich markup.
        out_console.print(f"{label} {verdict.score:.2f}  {escape(preview)}", highlight=False, soft_wrap=True)
        for reason in verdict.reasons:
            out_console.print(f"    reason: {reason}", markup=False, highlight=False)
        for span in spans:
            out_console.print(f"    pii: {span.type} [{span.start}, {span.end})", markup=False, highlight=False)


@guard_app.command("verify-audit")
@reports_errors
def verify_audit_command(
    path: Annotated[Path, typer.Argument(help="audit log (JSON lines)")],
    key_file: Annotated[
        Path | None, typer.Option("--key-file", help="file holding the audit HMAC key ([guard] audit_key_file)")
    ] = None,
    key_env: Annotated[
        str, typer.Option("--key-env", help="environment variable holding the audit HMAC key, read first")
    ] = "JIJIAN_AUDIT_KEY",
) -> None:
    """Check an audit log's hash chain (HMACs too, given the key); exit 1 and name the first bad line."""
    from rich.markup import escape

    from jijian.guard.audit import load_audit_key, verify_audit

    key = load_audit_key(key_file, key_env)
    verdict = verify_audit(path, key)
    if verdict.ok:
        what = "HMAC chain intact" if key is not None else "hash chain intact"
        note = f" ({escape(verdict.reason)})" if verdict.reason else ""
        err_console.print(f"[green]ok:[/] {escape(str(path))}: {verdict.entries} entries, {what}{note}", soft_wrap=True)
        return
    where = escape(f"{path}:{verdict.bad_line}: {verdict.reason}")
    err_console.print(f"[bold red]TAMPERED:[/] {where}", soft_wrap=True)
    raise typer.Exit(code=1)


@guard_app.command("keygen")
@reports_errors
def keygen(
    out: Annotated[Path, typer.Argument(help="key file to write (owner-readable only)")],
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing key file")] = False,
) -> None:
    """Write a new random 256-bit encryption key (base64) for [guard] key_file."""
    import os

    from jijian.guard.crypto import generate_key

    if out.exists() and not force:
        raise fail(f"{out} exists; pass --force to overwrite it (data encrypted with the old key becomes unreadable)")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(generate_key() + "\n")
    err_console.print(f"wrote {out}")


KeyFileOption = Annotated[Path | None, typer.Option(help="key file (else the environment variable)")]
KeyEnvOption = Annotated[str, typer.Option(help="environment variable holding the key")]


def _key(key_file: Path | None, key_env: str) -> bytes:
    from jijian.guard.crypto import load_key

    return load_key(key_file, key_env)


@guard_app.command("encrypt")
@reports_errors
def encrypt(
    src: Annotated[Path, typer.Argument(help="file to encrypt")],
    dst: Annotated[Path, typer.Argument(help="encrypted output (may be SRC itself)")],
    key_file: KeyFileOption = None,
    key_env: KeyEnvOption = "JIJIAN_GUARD_KEY",
) -> None:
    """Encrypt a file with AES-256-GCM (atomic write)."""
    from jijian.guard.crypto import encrypt_file

    encrypt_file(src, dst, _key(key_file, key_env))
    err_console.print(f"encrypted {src} -> {dst}")


@guard_app.command("decrypt")
@reports_errors
def decrypt(
    src: Annotated[Path, typer.Argument(help="encrypted file")],
    dst: Annotated[Path, typer.Argument(help="plaintext output (written only if the whole file authenticates)")],
    key_file: KeyFileOption = None,
    key_env: KeyEnvOption = "JIJIAN_GUARD_KEY",
) -> None:
    """Decrypt a file; a wrong key or a modified file is an error and DST is left untouched."""
    from jijian.guard.crypto import decrypt_file

    decrypt_file(src, dst, _key(key_file, key_env))
    err_console.print(f"decrypted {src} -> {dst}")


@guard_app.command("add-key")
@reports_errors
def add_key_command(
    key_file: Annotated[Path, typer.Argument(help="API key file ([guard] api_keys)")],
    user: Annotated[str, typer.Option(help="user name the key authenticates as")],
    role: Annotated[list[str] | None, typer.Option(help="a role of the user (repeatable)")] = None,
) -> None:
    """Create an API key for a user; prints it once (only its SHA-256 digest is stored)."""
    from jijian.guard.apikeys import add_key

    api_key = add_key(key_file, user, role or [])
    print(api_key)
    err_console.print(f"added a key for {user!r} to {key_file}; it is shown only now")
