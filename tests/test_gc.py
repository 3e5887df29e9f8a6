"""`ccoe gc` against a registry with several versions (aliases moved, one rejected, one orphaned) and
an artifact folder sharing the store: only blobs that nothing references go, and only when asked."""

import pytest

import ccoe.registry as registry
from ccoe.backbone import load_backbone
from ccoe.cli import main
from ccoe.config import BackboneSpec, RegistrySpec, StorageSpec, TrackingSpec
from ccoe.manifest import bare_manifest, collect_garbage
from ccoe.storage import BlobStore
from tests.test_registry import make_blob


@pytest.fixture
def world(local_backbone_dir, tmp_path):
    backbone = load_backbone(BackboneSpec(source=str(local_backbone_dir)))
    reg = RegistrySpec(tracking=TrackingSpec(root=str(tmp_path / "mlruns")), model_name="ccoe_gc")
    store = BlobStore(StorageSpec(uri=str(tmp_path / "store")))
    bare = bare_manifest(backbone)
    blobs = {name: make_blob(backbone, name, name, [i], seed=i + 1) for i, name in enumerate(["math", "law", "sql", "code"])}
    registry.merge_and_register(reg, store, bare=bare, blobs=[blobs["math"]])                     # v1 {math}
    registry.set_alias(reg, "champion", 1)
    registry.merge_and_register(reg, store, bare=bare, blobs=[blobs["law"]])                      # v2 {math, law}
    registry.tag_version(reg, 2, {registry.STATUS_TAG: "rejected"})
    registry.merge_and_register(reg, store, bare=bare, blobs=[blobs["sql"]], pops=["math"])       # v3 {sql} on v1
    _, orphan = store.put_blob(blobs["code"].data)  # uploaded by a merge that never registered
    return reg, store, orphan, {n: b.data for n, b in blobs.items()}


def _shas(store):
    return {b.sha256 for b in store.list_blobs()}


def test_gc_keeps_every_blob_any_version_references_whatever_its_alias_or_status(world):
    reg, store, orphan, _ = world
    referenced = registry.referenced_blobs(reg)
    assert len(referenced) == 3 and orphan not in referenced
    dry = collect_garbage(store, referenced, min_age_s=0)
    assert [b.sha256 for b in dry.unreferenced] == [orphan] and not dry.deleted and orphan in _shas(store)
    young = collect_garbage(store, referenced, delete=True, min_age_s=3600)
    assert young.unreferenced == () and [b.sha256 for b in young.too_recent] == [orphan] and orphan in _shas(store)
    done = collect_garbage(store, referenced, delete=True, min_age_s=0)
    assert [b.sha256 for b in done.unreferenced] == [orphan] and _shas(store) == referenced
    for version in (1, 2, 3):  # every version still loads: no referenced blob went
        registry.load(f"models:/{reg.model_name}/{version}", reg, use_cache=False)


def test_gc_command_is_a_dry_run_unless_told_and_counts_artifact_folders(world, tmp_path, capsys):
    from ccoe.artifact import save_artifact
    from ccoe.manifest import read_manifest

    reg, store, orphan, _ = world
    model, _, _ = registry.load(f"models:/{reg.model_name}/2", reg)
    model.pop_expert("math")
    folder = tmp_path / "artifact"
    save_artifact(model, str(folder))
    manifest_sha = read_manifest(str(folder)).experts["law"].sha256
    args = ["gc", "--storage", store.spec.uri, "--model", reg.model_name, "--tracking-uri", registry.tracking_uri(reg), "--min-age-hours", "0"]
    assert main(args) == 0
    assert "would remove (dry run; --delete to remove)" in capsys.readouterr().out and orphan in _shas(store)
    assert main([*args, "--artifact", str(folder), "--delete"]) == 0
    out = capsys.readouterr().out
    assert f"removed  {orphan}" in out and "3 referenced blobs kept; 1 unreferenced" in out
    assert orphan not in _shas(store) and manifest_sha in _shas(store)
    assert main(["gc", "--storage", store.spec.uri, "--artifact", str(folder), "--min-age-hours", "0"]) == 0  # the folder alone
    out = capsys.readouterr().out
    assert "1 referenced blobs kept; 2 unreferenced" in out and manifest_sha not in out  # math and sql, not law
    assert main(["gc", "--storage", store.spec.uri]) == 2


def test_gc_refuses_to_collect_against_a_model_with_no_versions(world, capsys):
    """A typo in --model (or an empty registry at a wrong --tracking-uri) must not make every blob look unreferenced."""
    reg, store, _, _ = world
    before = _shas(store)
    args = ["gc", "--storage", store.spec.uri, "--tracking-uri", registry.tracking_uri(reg), "--min-age-hours", "0", "--delete"]
    assert main([*args, "--model", "ccoe_gc_typo"]) == 2
    assert "'ccoe_gc_typo' has no versions" in capsys.readouterr().err and _shas(store) == before
