"""The decoder cache: appends past its spare capacity and reorders (in place or by copy) exactly
as index_select over the full history would."""

from __future__ import annotations

import pytest
import torch

from seqformer.decoding.cache import GROW, DecoderCache, _in_place_moves


def _filled(rows: int, steps: int, seed: int = 0) -> tuple[DecoderCache, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    cache = DecoderCache.empty(2)
    ks, vs = [], []
    for _ in range(steps):
        k, v = torch.randn(rows, 2, 1, 3, generator=gen), torch.randn(rows, 2, 1, 3, generator=gen)  # (R, H, 1, Dh)
        ks.append(k)
        vs.append(v)
        for layer in cache.layers:
            all_k, all_v = layer.append(k, v)
    torch.testing.assert_close(all_k, torch.cat(ks, dim=2), rtol=0, atol=0)
    return cache, torch.cat(ks, dim=2), torch.cat(vs, dim=2)  # (R, H, T, Dh) each


@pytest.mark.parametrize("rows", [
    [0, 0, 2, 2],  # beams 1 and 3 died; their parents' second children take their slots (in place)
    [0, 1, 2, 3],  # nothing moved
    [1, 0, 3, 2],  # a swap: a copied row is overwritten, so it must be a full copy
    [3, 3, 3, 3],  # every beam descends from the last one, which stays: in place
])
def test_reorder_equals_index_select(rows):
    cache, k, v = _filled(rows=4, steps=GROW + 3)  # past the first buffer's capacity
    idx = torch.tensor(rows)
    in_place = _in_place_moves(idx) is not None
    assert in_place == (rows != [1, 0, 3, 2])
    cache.reorder_beams(idx)
    for layer in cache.layers:
        end = layer.length
        torch.testing.assert_close(layer.self_k[:, :, :end], k[idx], rtol=0, atol=0)
        torch.testing.assert_close(layer.self_v[:, :, :end], v[idx], rtol=0, atol=0)
    new = torch.randn(4, 2, 1, 3)
    got_k, _ = cache.layers[0].append(new, new)  # appending after a reorder extends the reordered rows
    torch.testing.assert_close(got_k, torch.cat([k[idx], new], dim=2), rtol=0, atol=0)


def test_reorder_with_sources_drops_rows_and_memory_rows():
    cache, k, _ = _filled(rows=4, steps=3)
    for layer in cache.layers:
        layer.cross_k = layer.cross_v = torch.arange(2.0)[:, None, None, None].expand(2, 2, 5, 3).clone()  # (N, H, S, Dh)
    cache.reorder(torch.tensor([2, 3]), sources=torch.tensor([1]))
    assert torch.equal(cache.layers[1].self_k[:, :, :3], k[2:])
    assert cache.layers[1].cross_k.shape == (1, 2, 5, 3) and bool((cache.layers[1].cross_k == 1).all())


def test_a_capacity_holds_the_whole_search_in_one_buffer():
    """Sized by the search's length limit, the cache never regrows (each regrowth copies the whole history)."""
    steps = 3 * GROW
    cache = DecoderCache.empty(1, capacity=steps)
    layer, ks = cache.layers[0], []
    for _ in range(steps):
        ks.append(torch.randn(2, 2, 1, 3))  # (R, H, 1, Dh)
        got, _ = layer.append(ks[-1], ks[-1])
        if len(ks) == 1:
            buffer = layer.self_k.data_ptr()
    assert layer.self_k.data_ptr() == buffer and layer.self_k.size(2) == steps
    torch.testing.assert_close(got, torch.cat(ks, dim=2), rtol=0, atol=0)
