"""Entry point of the Ray job in test_ray_job.py: what a data engineer's job looks like."""

import asyncio

import ray

from llmaas import LLMClient

ray.init(address="auto")
client = LLMClient("llmaas")
reply = client.chat("tiny-llama", [{"role": "user", "content": "Hello"}], max_tokens=16)
print("CHAT:", reply.choices[0].message.content)
vectors = client.embed("minilm", ["one", "two", "three"])
print(f"EMBEDDINGS: {len(vectors.data)} x {len(vectors.data[0].embedding)}")


async def batch() -> int:
    prompts = [f"One, two, three, {i}" for i in range(16)]
    results = await asyncio.gather(*(client.acomplete("tiny-llama", p, max_tokens=4) for p in prompts))
    return sum(1 for r in results if r.choices[0].finish_reason in ("stop", "length"))


print(f"BATCH: {asyncio.run(batch())} completions")
