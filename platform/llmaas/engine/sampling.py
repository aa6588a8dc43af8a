"""Token selection per row of a batch: greedy, temperature, top-k, top-p, seeded generators."""

from __future__ import annotations

import random

import torch

from llmaas.engine.types import SamplingParams


def make_generator(params: SamplingParams) -> torch.Generator | None:
    """A private RNG per sequence, so the same seed gives the same tokens whatever else is batched."""
    if params.greedy:
        return None
    seed = params.seed if params.seed is not None else random.getrandbits(63)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Apply temperature, top-k and top-p to one row of logits (float32, shape [vocab])."""
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # NOTE: drop a token once the mass before it already reaches top_p; the first always stays.
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> list[int]:
    """Pick the next token for each row of ``logits`` ([batch, vocab])."""
    logits = logits.float()
    greedy_ids = torch.argmax(logits, dim=-1).tolist()
    out: list[int] = []
    for row, (p, gen) in enumerate(zip(params, generators, strict=True)):
        if p.greedy:
            out.append(int(greedy_ids[row]))
            continue
        probs = torch.softmax(filter_logits(logits[row], p), dim=-1)
        out.append(int(torch.multinomial(probs, 1, generator=gen).item()))
    return out
