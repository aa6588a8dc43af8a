"""SlabLayer holds exactly what DynamicLayer holds, while decode steps write in place."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from llmaas.engine.kv_budget import KVBudget
from llmaas.engine.kv_slab import SlabLayer, SlabLimits, compaction_order
from llmaas.engine.model_config import kv_bytes_per_token


def _kv(batch: int, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, tokens, 4, generator=g), torch.randn(batch, 2, tokens, 4, generator=g)


def test_slab_matches_dynamic_layer_through_prefill_decode_trim_and_row_selection():
    slab, plain = SlabLayer(), DynamicLayer()
    for step, tokens in enumerate([5, *[1] * 70]):  # 70 decode steps: outgrows the first buffer
        k, v = _kv(3, tokens, step)
        got, want = slab.update(k, v), plain.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert slab._k is not None
    buffer = slab._k.buffer
    slab.update(*_kv(3, 1, 99))
    plain.update(*_kv(3, 1, 99))
    assert slab._k.buffer is buffer, "a decode step with room left writes in place"
    slab.trim_left(4)
    assert plain.keys is not None and plain.values is not None
    plain.keys, plain.values = plain.keys[:, :, 4:], plain.values[:, :, 4:]
    assert slab.get_seq_length() == plain.get_seq_length() == 72
    assert slab._k.buffer is buffer, "trimming moves an offset, it copies nothing"
    rows = torch.tensor([0, 2])
    slab.batch_select_indices(rows)
    plain.batch_select_indices(rows)
    k, v = _kv(2, 1, 7)
    got, want = slab.update(k, v), plain.update(k, v)
    assert got[0].shape == (2, 2, 73, 4)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def _left_pad(t: torch.Tensor, tokens: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, 0, tokens - t.shape[2], 0))


def _joined(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    tokens = max(old.shape[2], new.shape[2])
    return torch.cat([_left_pad(old, tokens), _left_pad(new, tokens)])


def test_rows_join_and_leave_in_place_and_match_plain_tensors():
    slab = SlabLayer()
    keys, values = _kv(4, 10, 0)
    slab.update(keys, values)
    assert slab._k is not None
    buffer = slab._k.buffer

    # narrower newcomers: written below the live rows, right-aligned, zeros on their left
    k, v = _kv(2, 6, 1)
    slab.join(k, v)
    keys, values = _joined(keys, k), _joined(values, v)
    assert slab._k.buffer is buffer, "a join with spare rows and tokens copies only the newcomers"
    assert torch.equal(slab.keys, keys) and torch.equal(slab.values, values)

    # a wider newcomer: the live block grows left into the headroom; old rows get zero padding
    k, v = _kv(1, 14, 2)
    slab.join(k, v)
    keys, values = _joined(keys, k), _joined(values, v)
    assert slab._k.buffer is buffer
    assert torch.equal(slab.keys, keys) and torch.equal(slab.values, values)

    # rows 1 and 3 leave: the last rows fill their places, nothing else moves
    order = compaction_order([0, 2, 4, 5, 6])
    assert order == [0, 5, 2, 6, 4]
    slab.batch_select_indices(torch.tensor(order))
    keys, values = keys[order], values[order]
    assert slab._k.buffer is buffer
    assert torch.equal(slab.keys, keys) and torch.equal(slab.values, values)

    # any other order still works (a copy), then decode steps keep writing in place
    order = [4, 0, 1]
    slab.batch_select_indices(torch.tensor(order))
    keys, values = keys[order], values[order]
    for step in range(3):
        k, v = _kv(3, 1, 10 + step)
        got = slab.update(k, v)
        keys, values = torch.cat([keys, k], dim=2), torch.cat([values, v], dim=2)
        assert torch.equal(got[0], keys) and torch.equal(got[1], values)

    # more newcomers than spare rows, wider than the left headroom: one copy into a bigger buffer
    k, v = _kv(20, 80, 3)
    slab.join(k, v)
    keys, values = _joined(keys, k), _joined(values, v)
    assert slab._k.buffer is not buffer
    assert torch.equal(slab.keys, keys) and torch.equal(slab.values, values)
    assert slab.get_seq_length() == 80


def _slots(layer: SlabLayer) -> int:
    assert layer._k is not None
    return layer._k.buffer.shape[0] * layer._k.buffer.shape[2]


def test_spare_rows_and_tokens_stay_within_the_budget_and_decode_steps_keep_their_room():
    # unbounded: 16 rows of 300 tokens get 8 spare rows and 2 x 75 tokens of headroom (1.9x)
    free = SlabLayer()
    free.update(*_kv(16, 300, 0))
    assert _slots(free) == 24 * 450
    # a budget of 16 x 340 slots: the spare rows go first, then the left room; decode steps keep theirs
    limit = 16 * 340
    slab, plain = SlabLayer(SlabLimits(limit)), DynamicLayer()
    for step, tokens in enumerate([300, *[1] * 40]):
        k, v = _kv(16, tokens, step)
        got, want = slab.update(k, v), plain.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert _slots(slab) <= limit
    assert slab.get_seq_length() == 340
    # a join still fits when the budget has room for it (admission's rule), and matches plain tensors
    slab.batch_select_indices(torch.arange(8))
    keys, values = _kv(4, 340, 99)
    slab.join(keys, values)
    assert slab.keys is not None and plain.keys is not None
    assert torch.equal(slab.keys[8:], keys) and torch.equal(slab.keys[:8], plain.keys[:8])
    assert _slots(slab) <= limit


def test_one_prompt_prefilled_in_chunks_keeps_no_spare_rows():
    slab = SlabLayer(SlabLimits(spare_rows=False))
    slab.update(*_kv(1, 2000, 0))
    assert slab._k is not None and slab._k.buffer.shape[0] == 1
    assert _slots(slab) == 2000 + 2 * 500


def test_kv_budget_from_model_shape():
    class Config:
        num_hidden_layers, num_attention_heads, num_key_value_heads, hidden_size = 8, 8, 4, 512

    per_token = kv_bytes_per_token(Config(), torch.float16, tensor_parallel_size=2)
    assert per_token == 2 * 8 * 2 * 64 * 2  # K and V, 8 layers, 2 of 4 KV heads per rank, 64 dims, fp16
    budget = KVBudget(capacity_tokens=1000, bytes_per_token=per_token)
    assert budget.fits(10, 100) and not budget.fits(11, 100) and not budget.fits(1, 1001)
