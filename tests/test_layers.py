import pytest

from ccoe.config import LayerSelection
from ccoe.layers import explicit_layers, front_back_layers, global_layers, middle_layers, select_layers, top_layers


def test_top_takes_the_last_k():
    assert top_layers(3, 10) == (7, 8, 9)
    assert top_layers(10, 10) == tuple(range(10))


def test_global_spreads_evenly_over_bands():
    assert global_layers(4, 30) == (3, 11, 18, 26)
    assert global_layers(1, 30) == (15,)
    assert global_layers(30, 30) == tuple(range(30))
    gaps = {b - a for a, b in zip(global_layers(5, 30), global_layers(5, 30)[1:])}
    assert gaps == {6}


def test_front_back_splits_bottom_and_top():
    assert front_back_layers(4, 30) == (0, 1, 28, 29)
    assert front_back_layers(3, 30) == (0, 28, 29)
    assert front_back_layers(1, 5) == (4,)


def test_middle_is_a_centred_block():
    assert middle_layers(4, 30) == (13, 14, 15, 16)
    assert middle_layers(2, 3) == (0, 1)


def test_explicit_sorts_and_validates():
    assert explicit_layers([5, 1, 3], 8) == (1, 3, 5)
    with pytest.raises(ValueError, match="repeated: \\[3\\]"):
        explicit_layers([3, 3], 8)
    with pytest.raises(ValueError, match="out of range.*valid: 0..7"):
        explicit_layers([0, 8], 8)
    with pytest.raises(ValueError, match="out of range"):
        explicit_layers([-1], 8)
    with pytest.raises(ValueError, match="must not be empty"):
        explicit_layers([], 8)


@pytest.mark.parametrize("strategy", ["top", "global", "front-back", "middle"])
@pytest.mark.parametrize("k", [0, 31, -2])
def test_k_out_of_range_is_a_clear_error(strategy, k):
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 30\]"):
        select_layers(LayerSelection(strategy=strategy, k=k), 30)


@pytest.mark.parametrize("strategy", ["top", "global", "front-back", "middle"])
def test_every_strategy_gives_k_distinct_sorted_indices(strategy):
    for num_layers in (1, 2, 7, 30):
        for k in range(1, num_layers + 1):
            got = select_layers(LayerSelection(strategy=strategy, k=k), num_layers)
            assert len(got) == k and list(got) == sorted(set(got)) and 0 <= got[0] and got[-1] < num_layers


def test_selection_config_errors():
    with pytest.raises(ValueError, match="needs `k`"):
        LayerSelection(strategy="top")
    with pytest.raises(ValueError, match="needs a non-empty `indices`"):
        LayerSelection(strategy="explicit")
    with pytest.raises(ValueError, match="only used with strategy 'explicit'"):
        LayerSelection(strategy="top", k=2, indices=(1,))
    assert select_layers(LayerSelection(strategy="explicit", indices=(4, 2)), 6) == (2, 4)
