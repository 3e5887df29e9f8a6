"""The artifact round trip and the `ccoe` command, on a tiny local backbone with a real tokenizer."""

import json

import pytest
import torch

from ccoe.artifact import load_artifact, save_artifact
from ccoe.cli import build_model, main
from ccoe.config import CCoESpec, RouterSpec, load_yaml
from ccoe.manifest import MANIFEST_NAME, read_manifest
from tests.conftest import perturb
from tests.test_router import ROUTER_YAML


@pytest.fixture
def spec_file(tmp_path, local_backbone_dir):
    path = tmp_path / "ccoe.yaml"
    path.write_text(
        f"backbone: {{source: '{local_backbone_dir}'}}\n"
        "experts:\n"
        "  - {name: math, domain: math, layers: {strategy: top, k: 1}}\n"
        "  - {name: law, domain: law, layers: {strategy: explicit, indices: [0, 2]}}\n"
    )
    return path


def test_artifact_round_trip_reproduces_logits(spec_file, tmp_path):
    model = build_model(load_yaml(CCoESpec, spec_file))
    for i, expert in enumerate(model.experts.values()):
        perturb(expert, seed=i)
    root = str(tmp_path / "artifact")
    manifest = save_artifact(model, root)
    assert sorted(p.name for p in (tmp_path / "artifact" / "blobs").iterdir()) == sorted(
        f"{e.sha256}.safetensors" for e in manifest.experts.values()
    )
    loaded, router, again = load_artifact(root)
    assert router is None and again == manifest == read_manifest(root)
    ids = torch.randint(0, 97, (2, 5))
    for name in ("math", "law", None):
        assert torch.equal(loaded(ids, expert=name).logits, model(ids, expert=name).logits)


def test_artifact_refuses_a_corrupt_blob(spec_file, tmp_path, monkeypatch):
    monkeypatch.setenv("CCOE_CACHE", str(tmp_path / "empty-cache"))  # a cached verified copy would be used instead
    root = tmp_path / "artifact"
    manifest = save_artifact(build_model(load_yaml(CCoESpec, spec_file)), str(root))
    blob = root / manifest.experts["law"].blob
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_artifact(str(root))


def test_cli_create_info_route_generate(spec_file, tmp_path, capsys):
    out = str(tmp_path / "art")
    assert main(["create", "--config", str(spec_file), "--router", str(ROUTER_YAML), "--out", out]) == 0
    assert (tmp_path / "art" / MANIFEST_NAME).is_file()
    assert "with experts ['law', 'math']" in capsys.readouterr().out

    assert main(["info", "--artifact", out, "--json"]) == 0  # the manifest alone
    info = json.loads(capsys.readouterr().out)
    manifest = read_manifest(out)
    assert info["experts"]["law"] == {"domain": "law", "layers": [0, 2], "bytes": manifest.experts["law"].bytes,
                                      "sha256": manifest.experts["law"].sha256, "run_id": None, "data_fingerprint": None}
    assert info["backbone"]["fingerprint"] == manifest.backbone.fingerprint and info["router_domains"] == sorted(manifest.router.domains)
    assert main(["info", "--artifact", out, "--json", "--load"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backbone"]["layers"] == 4 and info["experts"]["law"]["layers"] == [0, 2]
    assert info["total_bytes"] < info["ensemble_bytes"]

    assert main(["route", "--artifact", out, "what is the sum of two and three"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["expert"] == "math" and "keyword 'sum'" in decision["reason"]

    assert main(["generate", "--artifact", out, "--json", "--max-new-tokens", "4", "what is the sum of two and three", "the court"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["expert"] for line in lines] == ["math", "law"]
    assert all(isinstance(line["text"], str) for line in lines)

    assert main(["generate", "--artifact", out, "--expert", "nope", "the court"]) == 2
    assert "no expert named 'nope'" in capsys.readouterr().err


def test_cli_reports_a_missing_artifact(tmp_path, capsys):
    assert main(["info", "--artifact", str(tmp_path / "missing")]) == 2
    assert "no CCoE artifact" in capsys.readouterr().err


def test_route_gc_and_help_load_no_tensor_library(spec_file, tmp_path):
    """`ccoe route` took 5-7 s because importing the router imported torch; it loads no model, so it
    must not import torch at all (then it answers in a fraction of a second)."""
    import subprocess
    import sys

    folder = tmp_path / "artifact"
    save_artifact(build_model(load_yaml(CCoESpec, spec_file)), str(folder), router=load_yaml(RouterSpec, ROUTER_YAML))
    script = (
        "import sys, contextlib, io\n"
        "from ccoe.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    assert main(['route', '--artifact', {str(folder)!r}, 'what is the sum of two and three']) == 0\n"
        f"    assert main(['gc', '--storage', {str(folder)!r}, '--artifact', {str(folder)!r}]) == 0\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert '\"expert\": \"math\"' in out.getvalue(), out.getvalue()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'mlflow')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
