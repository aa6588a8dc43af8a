from __future__ import annotations

import torch

from llmaas.engine.sampling import filter_logits, make_generator, sample
from llmaas.engine.types import SamplingParams


def test_greedy_ignores_generators():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 1.0]])
    params = [SamplingParams(temperature=0.0)] * 2
    assert sample(logits, params, [None, None]) == [1, 0]


def test_same_seed_same_tokens_different_seed_differs():
    logits = torch.zeros((1, 1000))
    p = SamplingParams(temperature=1.0, seed=7)
    a = [sample(logits, [p], [g])[0] for g in [make_generator(p)] for _ in range(20)]
    g = make_generator(p)
    b = [sample(logits, [p], [g])[0] for _ in range(20)]
    g2 = make_generator(SamplingParams(temperature=1.0, seed=8))
    c = [sample(logits, [p], [g2])[0] for _ in range(20)]
    assert a == b
    assert a != c


def test_top_k_keeps_only_k_tokens():
    logits = torch.tensor([1.0, 4.0, 3.0, 2.0])
    kept = torch.isfinite(filter_logits(logits, SamplingParams(temperature=1.0, top_k=2)))
    assert kept.tolist() == [False, True, True, False]


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = torch.isfinite(filter_logits(probs.log(), SamplingParams(temperature=1.0, top_p=0.75)))
    assert kept.tolist() == [True, True, False, False]
    # the top token always survives, however small top_p is
    kept = torch.isfinite(filter_logits(probs.log(), SamplingParams(temperature=1.0, top_p=0.01)))
    assert kept.tolist() == [True, False, False, False]


def test_sampled_tokens_respect_top_k():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    p = SamplingParams(temperature=2.0, top_k=2, seed=0)
    g = make_generator(p)
    assert {sample(logits, [p], [g])[0] for _ in range(200)} == {1, 2}
