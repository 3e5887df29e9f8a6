"""Export one expert as a standalone transformers checkpoint (backbone with the expert's layers in place).

The result loads with `AutoModelForCausalLM.from_pretrained(DIR)` and gives the same logits as the
CCoE model routed to that expert, so single-expert serving stacks (vLLM, TGI, llama.cpp converters)
can serve it. Expert tensors are keyed exactly like the backbone's, so this is a dict update.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ccoe.model import CCoEModel


def export_expert(model: CCoEModel, expert: str, out_dir: str | Path) -> Path:
    """Write config, safetensors weights, generation config and tokenizer to `out_dir` (atomically)."""
    if expert not in model.experts:
        raise KeyError(f"no expert named {expert!r}; available: {sorted(model.experts)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new folder")
    chosen = model.experts[expert]
    state = dict(model.lm.state_dict())
    state.update({k: v.detach() for k, v in chosen.tensors().items()})
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model.lm.save_pretrained(staging, state_dict=state)
        if model.backbone.tokenizer is not None:
            model.backbone.tokenizer.save_pretrained(staging)
        (staging / "ccoe-export.json").write_text(json.dumps({
            "expert": expert, "domain": chosen.domain, "layers": list(chosen.layer_indices),
            "backbone_fingerprint": model.fingerprint, "backbone_source": model.backbone.spec.source,
        }, indent=2))
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
