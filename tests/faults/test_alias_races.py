"""Forced interleavings of alias moves: `candidate` and `champion` only ever move forward.

MLflow has no compare-and-swap on aliases. Before `advance_alias`, a writer read the alias and then set
it, so a slow writer (v2) that read before a fast one (v4) set could put the alias back to v2 for good.
"""

import pytest

import ccoe.registry as registry
from ccoe.backbone import load_backbone
from ccoe.config import BackboneSpec, RegistrySpec, StorageSpec, TrackingSpec
from ccoe.manifest import bare_manifest
from ccoe.storage import BlobStore
from tests.test_registry import make_blob


@pytest.fixture
def reg_with_versions(local_backbone_dir, tmp_path):
    """Four published versions whose merges did not touch `candidate` or `champion`."""
    backbone = load_backbone(BackboneSpec(source=str(local_backbone_dir)))
    reg = RegistrySpec(tracking=TrackingSpec(root=str(tmp_path / "mlruns")), model_name="ccoe_alias")
    store = BlobStore(StorageSpec(uri=str(tmp_path / "store")))
    for i, name in enumerate(["math", "law", "sql", "code"]):
        registry.merge_and_register(reg, store, bare=bare_manifest(backbone), blobs=[make_blob(backbone, name, name, [i], seed=i + 1)],
                                    base_alias="build", alias="build")
    assert registry.valid_versions(reg) == [1, 2, 3, 4]
    return reg


@pytest.mark.parametrize("alias", ["candidate", "champion"])
def test_a_slow_writer_cannot_move_the_alias_backwards(reg_with_versions, monkeypatch, alias):
    reg = reg_with_versions
    real_set, order = registry.set_alias, []

    def set_after_a_faster_writer(spec, name, version):
        if not order:  # the slow writer (v2) has decided; the fast one (v4) runs to completion first
            order.append("fast")
            assert registry.advance_alias(spec, name, 4) == 4
        order.append(f"set {version}")
        real_set(spec, name, version)

    monkeypatch.setattr(registry, "set_alias", set_after_a_faster_writer)
    assert registry.advance_alias(reg, alias, 2) == 4
    assert order == ["fast", "set 4", "set 2", "set 4"]  # the slow write happened, and was repaired
    assert registry.get_alias_version(reg, alias) == 4


def test_an_older_version_never_replaces_a_newer_one(reg_with_versions):
    reg = reg_with_versions
    assert registry.advance_alias(reg, "champion", 3) == 3
    assert registry.advance_alias(reg, "champion", 2) == 3
    assert registry.get_alias_version(reg, "champion") == 3
    registry.set_alias(reg, "champion", 1)  # a deliberate roll-back by hand is still possible
    assert registry.get_alias_version(reg, "champion") == 1
    assert registry.advance_alias(reg, "champion", 4) == 4
