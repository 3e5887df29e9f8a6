"""Checkpoint loading that never runs code from a checkpoint: local files only, always `weights_only=True`.

A Lightning checkpoint is a pickle. Lightning 2.6 loads an `http(s)://` `ckpt_path` with
the weights-only restriction turned off (lightning_fabric.utilities.cloud_io._load), and any local load follows torch's
default, which `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` turns into a full unpickle. Our checkpoints hold
only the expert's tensors plus optimizer, scheduler, loop and callback state (tensors, numbers,
strings, lists, dicts, None), which the restricted unpickler reads, so nothing needs a full unpickle.

`SafeCheckpointIO` is the Trainer's checkpoint plugin (every Trainer made by `build_trainer`), so the
rule holds however `fit(ckpt_path=...)` is reached; `local_checkpoint` lets entry points refuse a bad
path before loading anything else.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

# Two or more letters then ':' (s3://, https://, gs://, file://, runs:/): a one-letter prefix is a Windows drive.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


def local_checkpoint(path: str | os.PathLike) -> Path:
    """`path` as a local checkpoint file; any URL scheme is refused, a missing file is an error."""
    text = os.fspath(path)
    if _URL.match(text):
        raise ValueError(
            f"resume checkpoint {text!r} is a URL; only local files are accepted, because loading a remote "
            "checkpoint can run code from it: copy the checkpoint to this machine and pass its local path"
        )
    local = Path(text)
    if not local.is_file():
        raise FileNotFoundError(f"resume checkpoint {local} does not exist or is not a file")
    return local


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A local checkpoint read with torch's restricted unpickler; one clear error if it holds anything else."""
    local = local_checkpoint(path)
    try:
        return torch.load(local, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0]
        raise ValueError(
            f"refusing to load checkpoint {local}: it holds Python objects other than tensors and plain "
            f"containers, which could run code when unpickled ({reason}); only checkpoints written by ccoe "
            "training can be resumed"
        ) from None


class SafeCheckpointIO(CheckpointIO):
    """Saves like Lightning's TorchCheckpointIO; loads only through `load_checkpoint`.

    `weights_only` from Lightning is ignored on purpose: loading is always restricted.
    """

    def __init__(self):
        self._torch_io = TorchCheckpointIO()

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        self._torch_io.save_checkpoint(checkpoint, path, storage_options)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, "cpu" if map_location is None else map_location)

    def remove_checkpoint(self, path) -> None:
        self._torch_io.remove_checkpoint(path)
