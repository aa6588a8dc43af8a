"""The hf-serve baseline's command line: its paged cache gets the replica's KV budget."""

from __future__ import annotations

from pathlib import Path

from llmaas.bench.hf_serve import KV_BLOCK_TOKENS, hf_serve_command


def test_the_continuous_batching_cache_holds_the_kv_budget_in_blocks():
    command = hf_serve_command(Path("/m"), 8123, True, kv_tokens=23301)
    assert command[command.index("--cb-block-size") + 1] == str(KV_BLOCK_TOKENS)
    assert command[command.index("--cb-num-blocks") + 1] == str(23301 // KV_BLOCK_TOKENS)
    assert "--continuous-batching" in command and command[command.index("--port") + 1] == "8123"


def test_without_a_budget_or_batching_it_sizes_nothing():
    assert "--cb-num-blocks" not in hf_serve_command(Path("/m"), 1, True)
    assert "--cb-num-blocks" not in hf_serve_command(Path("/m"), 1, False, kv_tokens=4096)
