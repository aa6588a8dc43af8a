"""What the gateway costs: one model behind two applications, measured alternately in one run.

``plain`` has no gateway; ``gated`` has API keys, limits and the ledger (every request waits
for its row's commit). Both serve the same model with the same settings on their own replicas,
and the same workload goes to each in turn (A, B, A, B, ...), so drift on a noisy machine hits
both. Short outputs make the per-request cost visible rather than hidden behind decoding.

    python -m llmaas.bench.gateway_ab --out benchmarks/gateway-cpu-2core
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from pydantic import BaseModel

from llmaas.bench.loadgen import BenchConfig, LevelReport, run_bench
from llmaas.catalogs import embedded_catalog_path
from llmaas.config.catalog import Catalog
from llmaas.config.gateway import GatewayConfig


class Comparison(BaseModel):
    level: int
    plain_e2e_p50_ms: float
    gated_e2e_p50_ms: float
    plain_req_s: float
    gated_req_s: float
    e2e_p50_ratio: float  # gated / plain: 1.0 means the gateway costs nothing
    req_s_ratio: float
    gated_errors: int


def _catalogs(model: str, database: str) -> tuple[Catalog, Catalog]:
    path = embedded_catalog_path("bench")
    assert path is not None
    base = Catalog.from_file(path)
    spec = base.get(model)
    if spec is None:
        raise SystemExit(f"error: {model!r} is not in the bench catalog")
    plain = base.model_copy(update={"models": [spec], "app_name": "plain"})
    gated = plain.model_copy(update={"app_name": "gated", "gateway": GatewayConfig(database=database)})
    return plain, gated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-llama-chat", help="a model of the bench catalog")
    parser.add_argument("--concurrency", default="1,16", help="closed-loop levels")
    parser.add_argument("--requests", type=int, default=64, help="requests per level and round")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (alternating)")
    parser.add_argument("--output-tokens", type=int, default=8, help="max_tokens of every request")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--out", default="bench-gateway")
    args = parser.parse_args(argv)

    from llmaas.api import prepare
    from llmaas.deploy import apply_catalog
    from llmaas.gateway.keys import KeyRequest, make_key
    from llmaas.gateway.store import open_store
    from llmaas.launch import cpus_needed, start_platform, stop_platform, wait_catalog

    database = f"sqlite:///{Path(tempfile.mkdtemp(prefix='llmaas-gw-')) / 'gateway.db'}"
    plain, gated = _catalogs(args.model, database)
    prepare(plain)
    url = start_platform(plain, port=args.port, extra_cpus=cpus_needed(gated))
    try:
        # NOTE: deployed as `llmaas deploy` does (declaratively, beside "plain"): its own front and
        # model applications, so the two share no replica.
        apply_catalog(gated, route_prefix="/gated")
        wait_catalog(gated, timeout_s=600)
        made = make_key(KeyRequest(name="bench"))
        store = open_store(database)
        store.create_key(made.key)
        levels = [int(c) for c in args.concurrency.split(",") if c]
        runs: dict[str, list[list[LevelReport]]] = {"plain": [], "gated": []}
        for round_ in range(args.rounds):
            for name, base, key in (("plain", url, None), ("gated", f"{url}/gated", made.secret)):
                config = BenchConfig(
                    url=base,
                    model=args.model,
                    concurrency=levels,
                    requests_per_level=args.requests,
                    prompt_words=(8, 16),
                    output_tokens=(args.output_tokens, args.output_tokens),
                    seed=round_,
                    api_key=key,
                )
                runs[name].append(asyncio.run(run_bench(config)))
                print(f"round {round_ + 1} {name}: " + ", ".join(
                    f"c{r.level:g} p50 {r.e2e_p50_ms:.1f} ms {r.req_s:.1f} req/s ({r.errors} errors)"
                    for r in runs[name][-1]
                ))  # fmt: skip
        rows_written = len(store.usage_rows())
        store.close()
    finally:
        stop_platform()
    comparisons = []
    for i, level in enumerate(levels):

        def mean(name: str, field: str, i: int = i) -> float:
            values = [getattr(run[i], field) for run in runs[name]]
            return float(sum(values) / len(values))

        p_lat, g_lat = mean("plain", "e2e_p50_ms"), mean("gated", "e2e_p50_ms")
        p_rps, g_rps = mean("plain", "req_s"), mean("gated", "req_s")
        comparisons.append(
            Comparison(
                level=level,
                plain_e2e_p50_ms=round(p_lat, 2),
                gated_e2e_p50_ms=round(g_lat, 2),
                plain_req_s=round(p_rps, 2),
                gated_req_s=round(g_rps, 2),
                e2e_p50_ratio=round(g_lat / p_lat, 3),
                req_s_ratio=round(g_rps / p_rps, 3),
                gated_errors=sum(run[i].errors for run in runs["gated"]),
            )
        )
    gated_requests = sum(run[i].requests for run in runs["gated"] for i in range(len(levels)))
    print(f"{'streams':>8} {'plain p50 ms':>13} {'gated p50 ms':>13} {'ratio':>6} {'plain req/s':>12} "
          f"{'gated req/s':>12} {'ratio':>6}")  # fmt: skip
    for c in comparisons:
        print(
            f"{c.level:>8} {c.plain_e2e_p50_ms:>13.1f} {c.gated_e2e_p50_ms:>13.1f} {c.e2e_p50_ratio:>6.2f} "
            f"{c.plain_req_s:>12.1f} {c.gated_req_s:>12.1f} {c.req_s_ratio:>6.2f}"
        )
    # +1 per round and target: run_bench's warm-up request
    print(f"ledger rows: {rows_written} for {gated_requests + args.rounds} gated requests (with warm-ups)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "model": args.model,
        "rounds": args.rounds,
        "output_tokens": args.output_tokens,
        "ledger_rows": rows_written,
        "gated_requests": gated_requests + args.rounds,
        "comparisons": [c.model_dump() for c in comparisons],
        "runs": {k: [[r.model_dump() for r in run] for run in v] for k, v in runs.items()},
    }
    (out / "gateway.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'gateway.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
