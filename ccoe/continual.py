"""Continual expert updates: data that arrives as shards, warm starts from the champion, replay.

A domain's data can be a folder or S3 prefix (`ShardSpec.location`) where shards accumulate, e.g. one
dated JSONL file per week. A shard is known by the sha256 of its bytes, never by its name: a renamed
file is the same shard, an edited file is a new one. Its bytes are copied once into the local cache
as `<cache>/shards/<sha256><suffix>` (the suffix from an allow-list), so no path is ever built from a
name found in the location, and later reads (the trainer, the gate) see exactly the hashed bytes.

Which examples an update trains on (`plan_shards`):
- `init: backbone`: every shard (retraining from scratch on all the data there is);
- `init: champion`: the shards the champion's expert has not seen, plus a replay sample of the
  training side of the shards it has seen (`replay_fraction` x the new training examples), so the
  continued expert rehearses what the old one knew.
Every shard's validation side is fixed by content (`ccoe.data.validation_bucket`, the trainer's own
split), so the held-out items of a shard are never trained on, in any update. The gate scores the
candidate on the held-out items of the new shards and of the shards seen before (the forgetting
check, `ccoe.pipeline`).

The selection is written to a content-addressed file (`selection_file`): a job travels as a flow-run
parameter, which Prefect caps at 512 KiB, and equal selections are the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import fsspec

from ccoe.config import DataSpec, ShardSpec, cache_root
from ccoe.data import Example, Record, load_records, to_examples, validation_bucket
from ccoe.storage import storage_options

SHARD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
MAX_SHARD_BYTES = 1 << 30


@dataclass(frozen=True)
class Shard:
    """One shard: its name in the location (shown to people only), content hash, size and local copy."""

    name: str
    sha256: str
    bytes: int
    path: Path


@dataclass(frozen=True)
class ShardPlan:
    """What one expert's update trains on and why (logged by the pipeline, recorded in the manifest).

    `seen`: shards the champion's expert had seen and that are still in the location; `new`: the rest,
    in arrival order; `lineage`: every shard the trained expert will have seen (its manifest `shards`);
    `records`: the rows to train on (new shards whole, or every shard for a fresh start, plus the
    replayed rows), `replayed` of them from earlier shards."""

    shards: tuple[Shard, ...]
    new: tuple[Shard, ...]
    seen: tuple[Shard, ...]
    lineage: tuple[str, ...]
    records: tuple[dict, ...]
    replayed: int

    def summary(self) -> str:
        fresh = len(self.records) - self.replayed
        return (f"{len(self.new)} new of {len(self.shards)} shards ({', '.join(s.name for s in self.new) or 'none'}); "
                f"training on {fresh} rows" + (f" + {self.replayed} replayed from {len(self.seen)} earlier shards" if self.replayed else ""))


def shard_cache() -> Path:
    return cache_root() / "shards"


def _suffix(name: str) -> str | None:
    lowered = name.lower()
    return next((s for s in SHARD_SUFFIXES if lowered.endswith(s)), None)


def _cache(data: bytes, suffix: str) -> tuple[str, Path]:
    """The bytes' sha256 and their cached copy (written atomically once)."""
    sha = hashlib.sha256(data).hexdigest()
    path = shard_cache() / f"{sha}{suffix}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return sha, path


def list_shards(spec: ShardSpec) -> list[Shard]:
    """The shards in `spec.location`, in name order, each hashed and cached locally.

    Only files directly in the location with an allowed suffix count; anything else there (sub-folders,
    `.tmp` files of a writer still at work, README) is ignored. A shard over MAX_SHARD_BYTES is refused."""
    uri = spec.location.uri.rstrip("/")
    fs, root = fsspec.core.url_to_fs(uri, **storage_options(spec.location))
    if not fs.isdir(root):
        raise FileNotFoundError(f"shard location {uri} does not exist or is not a folder/prefix")
    entries = sorted((e for e in fs.ls(root, detail=True) if e.get("type") == "file"), key=lambda e: e["name"])
    shards, hashes = [], set()
    for entry in entries:
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        suffix = _suffix(name)
        if suffix is None or name.startswith("."):
            continue
        size = int(entry.get("size") or 0)
        if size > MAX_SHARD_BYTES:
            raise ValueError(f"shard {uri}/{name} has {size} bytes, over the limit of {MAX_SHARD_BYTES}; split it into smaller shards")
        sha, path = _cache(fs.cat_file(entry["name"]), suffix)
        if sha in hashes:  # a copy of an earlier shard: the same data, counted once
            continue
        hashes.add(sha)
        shards.append(Shard(name, sha, size, path))
    if not shards:
        raise FileNotFoundError(f"shard location {uri} holds no shards ({'/'.join(SHARD_SUFFIXES)} files)")
    return shards


def cached_shard(sha256: str) -> Path | None:
    """The cached copy of a shard by its hash (what the gate reads back), or None."""
    return next((p for s in SHARD_SUFFIXES if (p := shard_cache() / f"{sha256}{s}").is_file()), None)


def shard_rows(path: Path, template: DataSpec) -> list[tuple[Record, Example]]:
    """Rows of one shard and their examples (formatted by `template`, whose source is not read)."""
    records = load_records(template.model_copy(update={"source": str(path), "records": None}))
    return list(zip(records, to_examples(records, template)))


def _held_out(rows: Sequence[tuple[Record, Example]], template: DataSpec) -> list[bool]:
    return [template.val_fraction > 0 and validation_bucket(ex, template.seed) < template.val_fraction for _, ex in rows]


def _replay_order(seed: int, example: Example) -> bytes:
    return hashlib.sha256(f"{seed}\x00{example.prompt}\x00{example.response}".encode()).digest()


def plan_shards(spec: ShardSpec, template: DataSpec, seen_by_champion: Sequence[str], continue_champion: bool) -> ShardPlan:
    """What an update trains on (see the module docstring). `seen_by_champion`: the champion expert's
    manifest `shards` ([] without one); `continue_champion`: the job starts from that expert."""
    shards = list_shards(spec)
    known = set(seen_by_champion)
    new = tuple(s for s in shards if s.sha256 not in known)
    seen = tuple(s for s in shards if s.sha256 in known)
    if not continue_champion:
        records = [record for shard in shards for record, _ in shard_rows(shard.path, template)]
        return ShardPlan(tuple(shards), new, seen, tuple(s.sha256 for s in shards), tuple(records), 0)
    fresh = [row for shard in new for row in shard_rows(shard.path, template)]
    fresh_train = sum(not held for held in _held_out(fresh, template))
    earlier = [row for shard in seen for row in shard_rows(shard.path, template)]
    pool = [row for row, held in zip(earlier, _held_out(earlier, template)) if not held]
    count = min(len(pool), round(spec.replay_fraction * fresh_train))
    replay = sorted(pool, key=lambda row: _replay_order(spec.seed, row[1]))[:count]
    lineage = tuple(dict.fromkeys([*seen_by_champion, *(s.sha256 for s in new)]))
    return ShardPlan(tuple(shards), new, seen, lineage, tuple(r for r, _ in fresh + replay), count)


def held_out_rows(shas: Sequence[str], template: DataSpec, limit: int | None = None) -> list[dict]:
    """The validation side of the given shards (by hash, read from the cache), in shard order, cut to
    `limit` rows spread evenly over the shards (so every shard is represented)."""
    per_shard = []
    for sha in shas:
        path = cached_shard(sha)
        if path is None:
            raise FileNotFoundError(f"shard {sha[:12]}… is not in the local shard cache {shard_cache()}; list the shard location again")
        rows = shard_rows(path, template)
        per_shard.append([dict(record) for (record, _), held in zip(rows, _held_out(rows, template)) if held])
    if limit is None:
        return [row for rows in per_shard for row in rows]
    picked, i = [], 0
    while len(picked) < limit and any(i < len(rows) for rows in per_shard):
        picked += [rows[i] for rows in per_shard if i < len(rows)][: limit - len(picked)]
        i += 1
    return picked


def selection_file(records: Sequence[dict]) -> Path:
    """The records as `<cache>/continual/<sha256 of their JSON lines>.jsonl`, written once (atomically)."""
    text = "".join(json.dumps(dict(row), ensure_ascii=False, sort_keys=True) + "\n" for row in records)
    path = cache_root() / "continual" / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path
