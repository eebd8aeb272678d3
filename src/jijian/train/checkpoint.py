"""Sharded, atomically committed training checkpoints through torch.distributed.checkpoint (DCP).

On disk, under the checkpoint directory:

    step_000120/            a committed checkpoint
        .metadata, __*.distcp   DCP's files: model and optimizer tensors, each rank writing its own shards
        trainer.json        step, data-loader position, LR schedule, skipped batches (rank 0)
        rng/rank{r}.pt      every RNG state of rank r (Python, NumPy, torch CPU and CUDA)
        manifest.json       size and CRC-32 of every file above, written last (rank 0)
    step_000130.tmp/        a checkpoint being written (or left by a crash; removed on the next start)
    latest                  the name of the newest committed checkpoint

A checkpoint becomes visible only by renaming its `.tmp` directory after the manifest is fsynced, so a
crash at any moment leaves either the old set or the new one. Tensors are keyed by parameter name, which
is the same under every parallel layout, so DCP reshards on load (save on 4 ranks, resume on 2).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from numpy.typing import NDArray

# DCP's package __init__ re-exports these without __all__, so strict mypy sees them only in their own modules.
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType, AsyncSaveResponse, async_save
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from jijian.config import UserInputError
from jijian.files import fsync_dir, write_text_atomic
from jijian.files.rundir import CHECKPOINT_MANIFEST as MANIFEST
from jijian.files.rundir import CHECKPOINT_PREFIX as _PREFIX
from jijian.files.rundir import LATEST, checkpoint_step

TRAINER_STATE = "trainer.json"
_TMP = ".tmp"

log = logging.getLogger(__name__)


class CheckpointError(UserInputError):
    """A checkpoint that cannot be used: named path, and the reason."""


@dataclass(frozen=True)
class Rejected:
    """A checkpoint that failed validation, and why."""

    path: Path
    reason: str


def checkpoint_name(step: int) -> str:
    """Directory name of the checkpoint taken after optimiser step `step`."""
    return f"{_PREFIX}{step:06d}"


def committed_checkpoints(root: Path) -> list[Path]:
    """Committed checkpoint directories under `root`, newest first."""
    if not root.is_dir():
        return []
    found = [(step, p) for p in root.iterdir() if p.is_dir() and (step := checkpoint_step(p)) is not None]
    return [p for _, p in sorted(found, reverse=True)]


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_manifest(directory: Path) -> None:
    """Record size and CRC-32 of every file in `directory` (fsynced), so a resume can prove it is whole."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[path.relative_to(directory).as_posix()] = {"bytes": path.stat().st_size, "crc32": _crc32(path)}
    target = directory / MANIFEST
    with target.open("w", encoding="utf-8") as f:
        json.dump({"format": 1, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    for sub in {directory, *(p.parent for p in directory.rglob("*") if p.is_file())}:
        fsync_dir(sub)


def validate_checkpoint(directory: Path) -> str | None:
    """None when every file in the manifest is present with its size and checksum; else the reason it is not."""
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        entries = [(name, int(meta["bytes"]), int(meta["crc32"])) for name, meta in files.items()]
    except FileNotFoundError:
        return f"{MANIFEST} is missing"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{MANIFEST} is unreadable ({exc.__class__.__name__}: {exc})"
    names = {name for name, _, _ in entries}
    for required in (".metadata", TRAINER_STATE):
        if required not in names:
            return f"{MANIFEST} does not list {required}"
    for name, size, crc in entries:
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{name} has {actual} bytes, the manifest says {size} (truncated or overwritten)"
        if _crc32(path) != crc:
            return f"{name} fails its CRC-32 check (corrupt)"
    return None


def newest_valid_checkpoint(root: Path, below_step: int | None = None) -> tuple[Path | None, list[Rejected]]:
    """The newest checkpoint that validates (optionally older than `below_step`), and those skipped on the way."""
    rejected: list[Rejected] = []
    for path in committed_checkpoints(root):
        step = checkpoint_step(path)
        if below_step is not None and step is not None and step >= below_step:
            continue
        reason = validate_checkpoint(path)
        if reason is None:
            return path, rejected
        rejected.append(Rejected(path, reason))
    return None, rejected


def check_shapes(path: Path, reader: FileSystemReader, state: dict[str, torch.Tensor]) -> None:
    """Refuse a checkpoint written for another model shape, naming the first tensor that differs.

    DCP reshards between layouts (the global shapes match), but a different [model] would otherwise
    fail deep inside the loader with a size mismatch that names no setting.
    """
    saved = reader.read_metadata().state_dict_metadata
    for key, tensor in state.items():
        meta = saved.get(key)
        if meta is None:
            raise CheckpointError(
                f"checkpoint {path} has no tensor {key!r}: it was written for another model or optimizer; "
                "point [checkpoint] dir at a fresh directory or restore the [model] and [train] it was made with"
            )
        size = getattr(meta, "size", None)
        if size is not None and tuple(size) != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint {path} was written with another model shape: {key} is {tuple(size)} there but "
                f"{tuple(tensor.shape)} in this run's [model]; point [checkpoint] dir at a fresh directory "
                "or restore the [model] it was made with"
            )


def retained(steps: list[int], keep_last: int, keep_every: int) -> set[int]:
    """Steps to keep: the newest `keep_last`, and every multiple of `keep_every` (0 = none)."""
    newest = sorted(steps, reverse=True)[:keep_last]
    return set(newest) | {s for s in steps if keep_every and s % keep_every == 0}


# -- the state of one rank --------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every random-number generator this process uses."""
    # legacy=True is the default; numpy's stubs type the default call as the dict form.
    legacy_state = cast(tuple[str, NDArray[np.uint32], int, int, float], np.random.get_state(legacy=True))
    kind, keys, pos, has_gauss, cached_gaussian = legacy_state
    # Only tensors, lists and plain numbers, so that loading needs no pickle beyond `weights_only=True`.
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gaussian]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` recorded."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def optimizer_tensors(parts: Sequence[torch.nn.Module], optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Optimizer state flattened to `optim.<parameter name>.<slot>`: unique, layout-independent keys DCP can reshard."""
    flat = {}
    for part in parts:
        for name, param in part.named_parameters():
            for slot, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor):
                    flat[f"optim.{name}.{slot}"] = value
    return flat


def materialize_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer's lazily built state (a step with zero gradients at LR 0) so a load has targets.

    Every update rule here moves a parameter by lr * (something finite for a zero gradient), so the
    parameters do not change; the values of the state are overwritten by the load that follows.
    """
    if optimizer.state:
        return
    saved = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
        for param in group["params"]:
            param.grad = torch.zeros_like(param)
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, saved, strict=True):
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)


class CheckpointManager:
    """Saves and restores a run's training state; rank 0 commits, validates and prunes.

    `collect` returns this job's JSON-able trainer state (identical on every rank); `tensors` returns the
    model and optimizer tensors keyed by name (local shards of DTensors included).
    """

    def __init__(
        self,
        root: Path,
        *,
        tensors: Callable[[], dict[str, torch.Tensor]],
        interval: int,
        keep_last: int,
        keep_every: int = 0,
        async_mode: str = "off",
        log: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.root = root
        self.tensors = tensors
        self.interval = interval
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.distributed = dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.log = log or (lambda record: None)
        self.async_mode = async_mode
        # Thread-based async save runs collectives in the background: it needs its own group (see notes).
        self._group = dist.new_group(backend="gloo") if self.distributed and async_mode != "off" else None
        self._stager = None
        if async_mode != "off":
            # Staging buffers are kept between saves (allocating them is most of a first save's cost), and
            # the copy into them runs in the background too: `before_update` waits for it.
            cuda = torch.cuda.is_available()
            options = StagingOptions(
                use_pinned_memory=cuda,
                use_shared_memory=async_mode == "process",
                use_async_staging=True,
                use_non_blocking_copy=cuda,
            )
            self._stager = DefaultStager(options)
        # Rank 0 checksums, renames and prunes on a worker thread: the shards are durable when save returns.
        self._committer = ThreadPoolExecutor(max_workers=1) if self.rank == 0 else None
        self._staging: Future[None] | None = None
        self._pending: tuple[Future[Any] | None, Future[None] | None] | None = None
        if self.rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(f"{_PREFIX}*{_TMP}"):
                # Left by a crash before its commit: never valid, and its name would collide with a retry.
                shutil.rmtree(stale, ignore_errors=True)
        self._barrier()

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    # -- save ---------------------------------------------------------------------------------------

    def save(self, step: int, trainer_state: dict[str, Any]) -> float:
        """Write a checkpoint of step `step`; returns the seconds training was blocked by it."""
        start = time.perf_counter()
        self.wait()  # one save in flight at a time: its staging buffers and directory are reused
        final = self.root / checkpoint_name(step)
        tmp = final.with_name(final.name + _TMP)
        if self.rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            (tmp / "rng").mkdir(parents=True)
            with (tmp / TRAINER_STATE).open("w", encoding="utf-8") as f:
                json.dump(trainer_state, f)
        self._barrier()  # the directory exists before any rank writes into it
        torch.save(rng_state(), tmp / "rng" / f"rank{self.rank}.pt")
        writer = FileSystemWriter(tmp, sync_files=True)
        state = self.tensors()
        upload: Future[Any] | None = None
        if self.async_mode == "off":
            # DCP's coordinator writes .metadata after gathering every rank's results: all shards are on disk.
            dcp_save(state, storage_writer=writer, no_dist=not self.distributed)
        else:
            kind = AsyncCheckpointerType.PROCESS if self.async_mode == "process" else AsyncCheckpointerType.THREAD
            response = async_save(
                state,
                storage_writer=writer,
                process_group=self._group,
                async_checkpointer_type=kind,
                async_stager=self._stager,
                no_dist=not self.distributed,
            )
            if isinstance(response, AsyncSaveResponse):
                upload, self._staging = response.upload_completion, response.staging_completion
            else:
                upload, self._staging = response, None
        commit = None
        if self._committer is not None:
            commit = self._committer.submit(self._commit_after, upload, tmp, final, step)
        self._pending = (upload, commit)
        return time.perf_counter() - start

    def before_update(self) -> float:
        """Wait until an async save has copied the state (call before the optimizer changes it); seconds waited."""
        if self._staging is None:
            return 0.0
        start = time.perf_counter()
        staging, self._staging = self._staging, None
        staging.result()
        return time.perf_counter() - start

    def _commit_after(self, upload: Future[Any] | None, tmp: Path, final: Path, step: int) -> None:
        if upload is not None:
            upload.result()
        self._commit(tmp, final, step)

    def _commit(self, tmp: Path, final: Path, step: int) -> None:
        write_manifest(tmp)
        if final.exists():  # a step saved again after a rollback replaces the older copy
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(self.root)
        write_text_atomic(self.root / LATEST, final.name + "\n")
        self.log({"event": "checkpoint_committed", "step": step, "path": str(final)})
        self._prune()

    def _prune(self) -> None:
        paths = {checkpoint_step(p): p for p in committed_checkpoints(self.root)}
        keep = retained([s for s in paths if s is not None], self.keep_last, self.keep_every)
        for step, path in paths.items():
            if step not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def wait(self) -> None:
        """Block until the save in flight (if any) is written and committed; re-raises its failure."""
        if self._pending is None:
            return
        self.before_update()
        upload, commit = self._pending
        self._pending = None
        if upload is not None:
            upload.result()
        if commit is not None:
            commit.result()
        self._barrier()  # every rank sees the committed directory before it may load or prune

    def close(self) -> None:
        """Finish the save in flight and release the background workers."""
        self.wait()
        if self._committer is not None:
            self._committer.shutdown()
        if self._stager is not None:
            self._stager.close()

    # -- load ---------------------------------------------------------------------------------------

    def choose(self, below_step: int | None = None) -> tuple[Path | None, list[Rejected]]:
        """Rank 0 picks the newest valid checkpoint and tells every rank; also returns those it skipped."""
        choice: list[Any] = [None, []]
        if self.rank == 0:
            path, rejected = newest_valid_checkpoint(self.root, below_step)
            choice = [str(path) if path is not None else None, rejected]
        if self.distributed:
            dist.broadcast_object_list(choice, src=0)
        return (Path(choice[0]) if choice[0] is not None else None), choice[1]

    def load(self, path: Path) -> dict[str, Any]:
        """Load tensors in place from checkpoint `path` (resharding as needed); returns its trainer state."""
        state = self.tensors()
        reader = FileSystemReader(path)
        check_shapes(path, reader, state)
        dcp_load(state, storage_reader=reader, no_dist=not self.distributed)
        rng_path = path / "rng" / f"rank{self.rank}.pt"
        if rng_path.is_file():  # absent when resuming on more ranks than saved: only the RNG stream differs
            try:
                # weights_only: a checkpoint directory may be shared; unpickling it must not run code.
                saved_rng = torch.load(rng_path, weights_only=True)
            except pickle.UnpicklingError as e:  # written before RNG states were saved as plain tensors
                log.warning("%s: RNG state not restored (not loadable with weights_only=True: %s)", rng_path, e)
            else:
                set_rng_state(saved_rng)
        trainer_state: dict[str, Any] = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
        return trainer_state
