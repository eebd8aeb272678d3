"""Entry point of one training rank under torchrun: `python -m jijian.train.worker deploy.toml`."""

from __future__ import annotations

import faulthandler
import os
import sys
from pathlib import Path
from typing import NoReturn


def main(argv: list[str] | None = None) -> int:
    """Train the config named on the command line as one rank of the job; exit 2 on bad input."""
    # A rank killed by a signal from native code (SIGABRT, SIGSEGV) prints every thread's Python stack, so
    # the launcher's log says where it was, not only its exit code.
    faulthandler.enable(all_threads=True)
    from rich.console import Console

    from jijian.config import ConfigError, UserInputError, load_config
    from jijian.train.distributed import is_rank0, shutdown
    from jijian.train.run import run_training

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m jijian.train.worker DEPLOY_TOML", file=sys.stderr)
        return 2
    console = Console(stderr=True)
    try:
        run_training(load_config(Path(args[0])), console=console if is_rank0() else None)
    except (ConfigError, UserInputError) as exc:
        if is_rank0():
            console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        shutdown(barrier=False)
        return 2
    except BaseException:
        shutdown(barrier=False)  # peers may be dead: a barrier could wait until the timeout
        raise
    shutdown()
    return 0


def leave(code: int) -> NoReturn:
    """End the rank with `code` without running the interpreter's teardown.

    When a rank gets here it has left the process group and written and closed every file. About one
    finished run in 20 to 60 under load, a rank still died in the teardown that followed: SIGABRT with
    "terminate called without an active exception", and faulthandler showed the main thread with no Python
    frame left (the interpreter finalising) while the abort came from a thread Python does not own, most
    likely a native thread of torch's collective stack: such a thread that needs the GIL once finalisation
    has begun is ended by pthread_exit, whose unwinding through a noexcept C++ frame calls std::terminate.
    os._exit skips the teardown, which has nothing left to do here; the output buffers are flushed first.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # the guard matters: process-based async checkpointing re-imports this module
    leave(main())
