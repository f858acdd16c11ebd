"""CachedSource: the same examples as its source, each decoded once, within its memory budget."""

import numpy as np
import pytest

from score_jax.source_cache import CachedSource


class CountingSource:
    """A source of 10 examples {'image': [2, 2, 1] uint8, 'label'} that counts its decodes."""

    def __init__(self, batched: bool):
        self.reads = 0
        if batched:
            self.__getitems__ = lambda idx: [self[i] for i in idx]

    def __len__(self):
        return 10

    def __getitem__(self, i):
        self.reads += 1
        return {"image": np.full((2, 2, 1), i, np.uint8), "label": i % 3}


@pytest.mark.parametrize("batched", [True, False])
def test_examples_equal_the_source_and_are_decoded_once(batched):
    source = CountingSource(batched)
    cached = CachedSource(source)
    order = [3, 1, 3, -1, 0]
    for _ in range(3):
        got = cached.__getitems__(order)
        assert [int(g["image"][0, 0, 0]) for g in got] == [3, 1, 3, 9, 0]
        assert [g["label"] for g in got] == [0, 1, 0, 0, 0]
    assert cached[3]["label"] == 0 and len(cached) == 10
    assert source.reads == 4  # examples 0, 1, 3 and 9, each once


def test_cached_arrays_are_read_only():
    cached = CachedSource(CountingSource(True))
    image = cached[2]["image"]
    with pytest.raises(ValueError, match="read-only"):
        image[0, 0, 0] = 7
    assert cached[2]["image"][0, 0, 0] == 2


def test_past_the_budget_examples_are_decoded_again():
    source = CountingSource(True)
    cached = CachedSource(source, max_bytes=2 * 4)  # room for two 4-byte images
    for _ in range(2):
        for i in range(4):
            assert cached[i]["image"][0, 0, 0] == i
    assert source.reads == 4 + 2  # 0 and 1 kept, 2 and 3 read twice
