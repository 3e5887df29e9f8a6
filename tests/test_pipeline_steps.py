"""Pipeline steps as plain functions: which expert of a manifest serves a domain in the evaluation."""

import pytest

from ccoe.config import BackboneSpec, RouterSpec
from ccoe.manifest import BackboneEntry, ExpertEntry, Manifest
from ccoe.pipeline import _expert_for


def _manifest(mapping: dict | None) -> Manifest:
    entry = lambda domain, digit: ExpertEntry(domain=domain, layers=[1], sha256=digit * 64, bytes=1, backbone_fingerprint="f")
    router = None if mapping is None else RouterSpec(domains={"law": {"keywords": ["court"]}, "math": {"keywords": ["sum"]}}, mapping=mapping)
    return Manifest(backbone=BackboneEntry(spec=BackboneSpec(source="x"), fingerprint="f"),
                    experts={"law_a": entry("law", "a"), "law_b": entry("law", "b"), "math": entry("math", "c")}, router=router)


def test_the_expert_of_a_domain_is_the_one_its_router_serves():
    manifest = _manifest({"law_a": {"law": 0.5}, "law_b": {"law": 1.0}, "math": {"math": 1.0}})
    assert (_expert_for(manifest, "law"), _expert_for(manifest, "math"), _expert_for(manifest, "sql")) == ("law_b", "math", None)


def test_two_experts_of_a_domain_without_a_mapping_are_an_error_not_a_guess():
    assert _expert_for(_manifest(None), "math") == "math"
    with pytest.raises(ValueError, match="domain 'law' has experts \\['law_a', 'law_b'\\] and no router mapping"):
        _expert_for(_manifest(None), "law")
