"""Crash points in a merge, corrupt blobs and foreign backbones: the registry stays consistent.

A crash is a BaseException raised at the chosen point (nothing in the merge may swallow it, as nothing
survives a SIGKILL); the store and the registry are then inspected, and a re-run must complete.
"""

import os
import socket
import subprocess
import sys
import time

import pytest

import ccoe.registry as registry
from ccoe.backbone import load_backbone
from ccoe.config import BackboneSpec, RegistrySpec, StorageSpec, TrackingSpec
from ccoe.manifest import bare_manifest
from ccoe.storage import BlobStore
from tests.conftest import tiny_spec
from tests.test_registry import _blob_files, make_blob


class Crash(BaseException):
    """Stands in for the process dying at this point."""


@pytest.fixture
def backbone(local_backbone_dir):
    return load_backbone(BackboneSpec(source=str(local_backbone_dir)))


@pytest.fixture
def reg(tmp_path):
    return RegistrySpec(tracking=TrackingSpec(root=str(tmp_path / "mlruns")), model_name="ccoe_faults", publish_timeout_s=10)


@pytest.fixture
def local_store(tmp_path):
    return BlobStore(StorageSpec(uri=str(tmp_path / "store")))


def _crash_on(monkeypatch, target, name, when):
    real = getattr(target, name)

    def crashing(*args, **kwargs):
        if when(*args, **kwargs):
            raise Crash(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, crashing)


def test_a_version_orphaned_before_publishing_is_invisible_to_later_merges(backbone, reg, local_store, monkeypatch):
    bare = bare_manifest(backbone)
    registry.merge_and_register(reg, local_store, bare=bare, blobs=[make_blob(backbone, "math", "math", [3])])
    registry.set_alias(reg, "champion", 1)
    with monkeypatch.context() as patch:  # the merge dies right after MLflow created version 2
        _crash_on(patch, registry.MlflowClient, "set_model_version_tag", lambda self, name, version, key, value: key == registry.PUBLISHED_TAG)
        with pytest.raises(Crash):
            registry.merge_and_register(reg, local_store, bare=bare, blobs=[make_blob(backbone, "stray", "law", [1], seed=2)])
    assert registry.client(reg).get_model_version(reg.model_name, "2").tags.get(registry.PUBLISHED_TAG) is None
    assert registry.valid_versions(reg) == [1]
    nxt = registry.merge_and_register(reg, local_store, bare=bare, blobs=[make_blob(backbone, "sql", "sql", [2], seed=3)])
    assert (nxt.version, nxt.attempts, nxt.manifest.parent) == (3, 1, 1)
    assert set(nxt.manifest.experts) == {"math", "sql"}  # the orphan's expert was not absorbed
    assert registry.get_alias_version(reg, "candidate") == 3 and registry.get_alias_version(reg, "champion") == 1


def test_a_merge_killed_while_uploading_leaves_no_temporary_and_no_version(backbone, reg, local_store, monkeypatch):
    bare = bare_manifest(backbone)
    with monkeypatch.context() as patch:
        _crash_on(patch, type(local_store.fs), "mv", lambda *a, **k: True)  # after the bytes, before the rename
        with pytest.raises(Crash):
            registry.merge_and_register(reg, local_store, bare=bare, blobs=[make_blob(backbone, "math", "math", [3])])
    assert _blob_files(local_store) == [] and registry.valid_versions(reg) == []
    again = registry.merge_and_register(reg, local_store, bare=bare, blobs=[make_blob(backbone, "math", "math", [3])])
    assert again.version == 1 and len(_blob_files(local_store)) == 1


@pytest.mark.parametrize("host", [None, "node1.cluster.local"])
def test_a_temporary_left_by_a_killed_writer_is_swept(backbone, local_store, monkeypatch, host):
    if host is not None:  # a host name with dots (an FQDN) must not break the match
        monkeypatch.setattr(socket, "gethostname", lambda: host)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = os.path.join(local_store.root, "blobs")
    os.makedirs(folder)
    stale = os.path.join(folder, f".{'0' * 64}.safetensors.{socket.gethostname()}.{dead.pid}.tmp")
    alive = os.path.join(folder, f".{'1' * 64}.safetensors.{socket.gethostname()}.{os.getpid()}.tmp")
    for path in (stale, alive):
        open(path, "wb").write(b"partial")
    local_store.put_blob(make_blob(backbone, "math", "math", [3]).data)
    assert not os.path.exists(stale) and os.path.exists(alive)  # a live writer's temporary is left alone


def test_a_same_size_corrupt_blob_is_not_referenced_by_a_new_version(backbone, reg, store):
    bare = bare_manifest(backbone)
    math = make_blob(backbone, "math", "math", [3])
    first = registry.merge_and_register(reg, store, bare=bare, blobs=[math])
    entry = first.manifest.experts["math"]
    corrupt = bytearray(store.get(entry.blob))
    corrupt[-1] ^= 1  # one byte, same size
    store.put_file(entry.blob, bytes(corrupt))
    with pytest.raises(FileNotFoundError, match="does not match its sha256"):
        registry.merge_and_register(reg, store, bare=bare, blobs=[make_blob(backbone, "law", "law", [1], seed=2)])
    assert registry.valid_versions(reg) == [1]
    repaired = registry.merge_and_register(reg, store, bare=bare, blobs=[math, make_blob(backbone, "law", "law", [1], seed=2)])
    assert repaired.version == 2 and store.get(entry.blob) == math.data  # pushing the expert again repairs its blob


def test_a_foreign_backbone_merge_uploads_nothing(backbone, reg, local_store):
    registry.merge_and_register(reg, local_store, bare=bare_manifest(backbone), blobs=[make_blob(backbone, "math", "math", [3])])
    before, written = sorted(_blob_files(local_store)), local_store.bytes_written
    other = load_backbone(tiny_spec("llama", seed=5))
    with pytest.raises(ValueError, match="different backbone|nothing was written"):
        registry.merge_and_register(reg, local_store, bare=bare_manifest(other), blobs=[make_blob(other, "law", "law", [1])])
    assert sorted(_blob_files(local_store)) == before and local_store.bytes_written == written


@pytest.mark.slow
def test_a_version_published_late_is_waited_for_not_overtaken(backbone, reg, local_store, monkeypatch):
    """A creates v2 but publishes it late; meanwhile B creates v3 on the same parent. B must not decide
    v3 is valid while v2 is in flight (v2 would make v3 invalid after B returned): B waits, sees v2,
    supersedes v3 and merges again on top of v2, so the candidate holds both experts."""
    import threading

    bare = bare_manifest(backbone)
    registry.merge_and_register(reg, local_store, bare=bare, blobs=[make_blob(backbone, "math", "math", [3])])
    registry.set_alias(reg, "champion", 1)
    real_register, done = registry._register, {}

    def register_then_let_b_overtake(spec, manifest, tags):
        version = real_register(spec, manifest, tags)
        if not done:  # A's v2 exists, unpublished: B merges in another thread and gets to its validity check first
            done["b"] = threading.Thread(target=lambda: done.setdefault("result", registry.merge_and_register(
                spec, local_store, bare=bare, blobs=[make_blob(backbone, "sql", "sql", [2], seed=3)])))
            done["b"].start()
            deadline = time.monotonic() + 30
            while not any(int(mv.version) == 3 and mv.tags.get(registry.PUBLISHED_TAG) == "true" for mv in registry._versions(spec)):
                assert time.monotonic() < deadline, "B never published v3"
                time.sleep(0.1)
        return version

    monkeypatch.setattr(registry, "_register", register_then_let_b_overtake)
    a = registry.merge_and_register(reg, local_store, bare=bare, blobs=[make_blob(backbone, "law", "law", [1], seed=2)])
    done["b"].join(timeout=60)
    b = done["result"]
    assert (a.version, a.attempts) == (2, 1) and (b.version, b.attempts, b.manifest.parent) == (4, 2, 2)
    assert registry.valid_versions(reg) == [1, 2, 4]
    assert set(b.manifest.experts) == {"math", "law", "sql"} and registry.get_alias_version(reg, "candidate") == 4
