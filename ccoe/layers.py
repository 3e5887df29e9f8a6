"""Layer-selection strategies: which `k` of the backbone's `L` decoder layers an expert owns.

- `top`: the last `k` layers. Everything below is shared by all experts, so prefix activations (and
  the KV cache below the split) can be computed once and reused: the fastest strategy.
- `global`: `k` layers spread evenly over the depth, each at the centre of one of `k` equal bands
  (the paper's best-quality strategy).
- `front-back`: `k // 2` at the bottom, the rest at the top.
- `middle`: a contiguous block of `k` centred in the stack.
- `explicit`: the given indices.

Every function returns a sorted tuple of distinct absolute layer indices in `[0, L)`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ccoe.config import LayerSelection


def _check_k(k: int, num_layers: int) -> None:
    if num_layers < 1:
        raise ValueError(f"the backbone must have at least one decoder layer, got {num_layers}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_layers:
        raise ValueError(f"k must be an integer in [1, {num_layers}] for a {num_layers}-layer backbone, got {k!r}")


def top_layers(k: int, num_layers: int) -> tuple[int, ...]:
    _check_k(k, num_layers)
    return tuple(range(num_layers - k, num_layers))


def global_layers(k: int, num_layers: int) -> tuple[int, ...]:
    _check_k(k, num_layers)
    # Centre of band i of width L/k: floor((i + 1/2) * L / k). Integer arithmetic keeps it exact.
    return tuple((2 * i + 1) * num_layers // (2 * k) for i in range(k))


def front_back_layers(k: int, num_layers: int) -> tuple[int, ...]:
    _check_k(k, num_layers)
    front = k // 2
    return tuple(range(front)) + tuple(range(num_layers - (k - front), num_layers))


def middle_layers(k: int, num_layers: int) -> tuple[int, ...]:
    _check_k(k, num_layers)
    start = (num_layers - k) // 2
    return tuple(range(start, start + k))


def explicit_layers(indices: Sequence[int], num_layers: int) -> tuple[int, ...]:
    if not indices:
        raise ValueError("explicit layer indices must not be empty")
    bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"layer indices {bad} are out of range for a {num_layers}-layer backbone (valid: 0..{num_layers - 1})")
    duplicates = sorted({i for i in indices if list(indices).count(i) > 1})
    if duplicates:
        raise ValueError(f"layer indices must be distinct; repeated: {duplicates}")
    return tuple(sorted(indices))


_STRATEGIES = {
    "top": top_layers,
    "global": global_layers,
    "front-back": front_back_layers,
    "middle": middle_layers,
}


def select_layers(selection: LayerSelection, num_layers: int) -> tuple[int, ...]:
    """Resolve a LayerSelection against a backbone of `num_layers` decoder layers."""
    if selection.strategy == "explicit":
        return explicit_layers(list(selection.indices or ()), num_layers)
    return _STRATEGIES[selection.strategy](selection.k, num_layers)
