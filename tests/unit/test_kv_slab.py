"""SlabLayer holds exactly what DynamicLayer holds, while decode steps write in place."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from llmaas.engine.kv_budget import KVBudget
from llmaas.engine.kv_slab import SlabLayer
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


def test_kv_budget_from_model_shape():
    class Config:
        num_hidden_layers, num_attention_heads, num_key_value_heads, hidden_size = 8, 8, 4, 512

    per_token = kv_bytes_per_token(Config(), torch.float16, tensor_parallel_size=2)
    assert per_token == 2 * 8 * 2 * 64 * 2  # K and V, 8 layers, 2 of 4 KV heads per rank, 64 dims, fp16
    budget = KVBudget(capacity_tokens=1000, bytes_per_token=per_token)
    assert budget.fits(10, 100) and not budget.fits(11, 100) and not budget.fits(1, 1001)
