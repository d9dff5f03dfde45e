"""Checkpoint folders in ``output_dir``: naming, discovery of complete ones, pruning and stale-temp cleanup.

A checkpoint is written into ``output_dir/.checkpoint-<step>.tmp`` and renamed to ``output_dir/checkpoint-<step>``
only when complete (it then holds ``trainer_state.json``), so a crash mid-write never leaves a folder that
``--resume_from_checkpoint latest`` would pick.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from diffusers.utils import logging

logger = logging.get_logger(__name__)

__all__ = [
    "TRAINER_STATE_NAME",
    "checkpoint_name",
    "list_checkpoints",
    "latest_checkpoint",
    "prune_checkpoints",
    "remove_incomplete_checkpoints",
    "read_trainer_state",
    "write_json_atomic",
]

TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_TEMP_RE = re.compile(r"^\.checkpoint-(\d+)\.(tmp|old)$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{int(step)}"


def temp_checkpoint_name(step: int, what: str = "tmp") -> str:
    return f".checkpoint-{int(step)}.{what}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints ``(step, path)`` in ``output_dir``, oldest (lowest step) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _CHECKPOINT_RE.match(entry.name)
        if match and entry.is_dir():
            if (entry / TRAINER_STATE_NAME).is_file():
                found.append((int(match.group(1)), entry))
            else:
                logger.warning(
                    f"Ignoring {entry}: it has no {TRAINER_STATE_NAME}, so it is not a complete checkpoint."
                )
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or ``None``."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: str | os.PathLike, limit: int | None) -> list[Path]:
    """Remove the oldest complete checkpoints so that at most ``limit`` remain; returns the removed folders."""
    if limit is None:
        return []
    found = list_checkpoints(output_dir)
    removed = []
    for _, path in found[: max(0, len(found) - limit)]:
        logger.info(f"Removing old checkpoint {path} (checkpoints_total_limit={limit}).")
        shutil.rmtree(path)
        removed.append(path)
    return removed


def remove_incomplete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Delete temp folders a killed run left behind (``.checkpoint-<n>.tmp`` / ``.old``); returns them."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    removed = []
    for entry in root.iterdir():
        if _TEMP_RE.match(entry.name) and entry.is_dir():
            logger.warning(f"Removing incomplete checkpoint folder {entry} left by an interrupted run.")
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def read_trainer_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    path = Path(checkpoint) / TRAINER_STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{str(checkpoint)!r} is not a complete checkpoint: {TRAINER_STATE_NAME} is missing.")
    return json.loads(path.read_text(encoding="utf-8"))


def write_json_atomic(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write JSON via a temp file + ``os.replace`` (fsynced), so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path
