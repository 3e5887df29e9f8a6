"""Experts: trainable copies of some backbone decoder layers, and their safetensors blobs.

An expert owns whole decoder layers at absolute indices. Its state is only its own tensors, keyed
exactly as in the backbone's state dict (`model.layers.{i}.<param>`), so a blob can be dropped into
a plain transformers checkpoint (export) and never contains a backbone tensor.

Blob format: safetensors with string metadata `ccoe_format`, `name`, `domain`, `layers` (JSON list)
and `backbone_fingerprint`. A blob is addressed by the sha256 of its bytes; loading checks the hash
and the fingerprint before any tensor reaches a model. No pickle anywhere.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from ccoe.backbone import Backbone
from ccoe.config import ExpertSpec, LayerSelection, check_name
from ccoe.layers import explicit_layers, select_layers
from ccoe.manifest import BLOB_FORMAT, read_blob_metadata


class Expert(nn.Module):
    """Decoder layers owned by one expert.

    `layers[str(i)]` replaces backbone layer `i`. Each copy keeps its `self_attn.layer_idx == i`, so
    it reads and writes the KV cache slot of the layer it stands in for.
    """

    def __init__(self, name: str, domain: str, layers: dict[int, nn.Module], backbone_fingerprint: str):
        super().__init__()
        self.name = check_name(name)
        self.domain = check_name(domain, "domain name")
        self.layer_indices: tuple[int, ...] = tuple(sorted(layers))
        self.layers = nn.ModuleDict({str(i): layers[i] for i in self.layer_indices})
        self.backbone_fingerprint = backbone_fingerprint

    def layer(self, index: int) -> nn.Module:
        return self.layers[str(index)]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The expert's tensors keyed as in the backbone (`model.layers.{i}.<param>`)."""
        return {f"model.{key}": value for key, value in self.state_dict().items()}

    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def metadata(self) -> dict[str, str]:
        return {
            "ccoe_format": BLOB_FORMAT,
            "name": self.name,
            "domain": self.domain,
            "layers": json.dumps(list(self.layer_indices)),
            "backbone_fingerprint": self.backbone_fingerprint,
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, domain={self.domain!r}, layers={list(self.layer_indices)}"


def _copy_layers(backbone: Backbone, indices: Sequence[int]) -> dict[int, nn.Module]:
    """Deep copies of backbone layers, trainable; the backbone's own layers stay frozen."""
    copies = {}
    for i in indices:
        layer = copy.deepcopy(backbone.layers[i])
        layer.requires_grad_(True)
        copies[i] = layer
    return copies


def create_expert(
    backbone: Backbone,
    name: str,
    domain: str,
    layers: LayerSelection | Sequence[int],
) -> Expert:
    """A new expert initialised as an exact copy of the backbone layers it owns."""
    if isinstance(layers, LayerSelection):
        indices = select_layers(layers, backbone.num_layers)
    else:
        indices = explicit_layers(list(layers), backbone.num_layers)
    return Expert(name, domain, _copy_layers(backbone, indices), backbone.fingerprint)


def expert_from_spec(backbone: Backbone, spec: ExpertSpec) -> Expert:
    return create_expert(backbone, spec.name, spec.domain, spec.layers)


@dataclass(frozen=True)
class BlobInfo:
    """What a saved expert blob is: its content hash, its size and where it was written."""

    sha256: str
    num_bytes: int
    path: str


def canonical_header(data: bytes) -> bytes:
    """`data` (safetensors bytes) with its JSON header re-written with sorted keys, compact, padded to 8.

    Why: safetensors writes `__metadata__` in hash-map order, which varies from process to process, so
    one unchanged expert got a different sha256 on every save and content addressing never
    de-duplicated. Tensor offsets are relative to the data section, which is left as it is (its
    layout is already a function of the tensors alone).
    """
    (length,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8 : 8 + length]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data[8 + length :]


def expert_to_bytes(expert: Expert) -> bytes:
    """The expert's blob: identical bytes (and sha256) for identical content in any process."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in expert.tensors().items()}
    return canonical_header(save_safetensors_bytes(tensors, metadata=expert.metadata()))


def save_expert(expert: Expert, path: str | Path) -> BlobInfo:
    """Write the expert blob atomically (temporary file + rename) and return its sha256."""
    path = Path(path)
    data = expert_to_bytes(expert)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return BlobInfo(sha256=hashlib.sha256(data).hexdigest(), num_bytes=len(data), path=str(path))


def expert_from_bytes(data: bytes, backbone: Backbone, sha256: str | None = None, name: str | None = None) -> Expert:
    """Rebuild an expert from blob bytes, verifying its hash and backbone fingerprint first.

    `name` loads it under another name than the blob's (an evaluation holds the champion's and the
    candidate's expert of one name side by side); by default it keeps its own."""
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ValueError(f"expert blob sha256 mismatch: expected {sha256}, got {actual}; the blob is corrupt or not the one referenced")
    meta = read_blob_metadata(data)
    if meta["backbone_fingerprint"] != backbone.fingerprint:
        raise ValueError(
            f"expert {meta['name']!r} was trained on backbone {meta['backbone_fingerprint'][:12]}…, "
            f"but this backbone is {backbone.fingerprint[:12]}…; load the backbone it was made for"
        )
    indices = json.loads(meta["layers"])
    expert = Expert(name or meta["name"], meta["domain"], _copy_layers(backbone, explicit_layers(indices, backbone.num_layers)), meta["backbone_fingerprint"])
    tensors = load_safetensors_bytes(data)
    own = expert.tensors()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ValueError(f"expert blob {meta['name']!r} does not match the backbone's layer layout: missing {missing[:5]}, unexpected {unexpected[:5]}")
    expert.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items()}, strict=True)
    return expert


def continued_expert(data: bytes, sha256: str, backbone: Backbone, spec: ExpertSpec) -> Expert:
    """The expert `spec` continues from (a warm start): the parent blob's weights, under `spec.name`.

    Refused unless the blob's hash is `sha256`, it was made for this backbone, for `spec.domain`, and on
    exactly the layers `spec.layers` selects: continuing on other layers would silently train a
    different expert than the config says."""
    expert = expert_from_bytes(data, backbone, sha256=sha256, name=spec.name)
    wanted = tuple(sorted(select_layers(spec.layers, backbone.num_layers)))
    if tuple(expert.layer_indices) != wanted or expert.domain != spec.domain:
        raise ValueError(
            f"cannot continue expert {spec.name!r} from blob {sha256[:12]}…: it holds domain {expert.domain!r} on layers "
            f"{list(expert.layer_indices)}, the config asks for {spec.domain!r} on {list(wanted)}; train it from the backbone (init: backbone)"
        )
    return expert


def load_expert(path: str | Path, backbone: Backbone, sha256: str | None = None) -> Expert:
    return expert_from_bytes(Path(path).read_bytes(), backbone, sha256)
