"""The ``llmaas`` command line.

Examples:
  llmaas serve                              # the embedded default on http://127.0.0.1:8000
  llmaas serve --catalog models.yaml --host 0.0.0.0 --port 8080
  llmaas prepare --catalog models.yaml      # build/load demo models ahead of time
  llmaas check --catalog models.yaml        # validate a catalog, deploy nothing
  llmaas deploy models.yaml                 # converge a running platform to the file (rolls what changed)
  llmaas status                             # replicas and load of every model of a running platform
  llmaas bench --catalog bench --model bench-llama --baselines all   # the committed benchmark
  llmaas bench --url http://127.0.0.1:8000 --model smollm2-135m-instruct    # load-test a running platform
  llmaas bench --catalog bench --model bench-llama --workload shared-prefix --compare-catalog other.yaml
  llmaas keys create --catalog models.yaml --name alice --rpm 60    # an API key (catalog with a gateway)
  llmaas usage --catalog models.yaml --since 24h                    # requests and tokens per key and model
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from llmaas.api import (
    BOOTSTRAP_CLUSTER,
    CatalogError,
    fit_to_cluster,
    load_catalog,
    prepare,
    training_capacity,
)
from llmaas.config.catalog import Catalog


def _report(error: CatalogError) -> None:
    print(f"error: {error}", file=sys.stderr)


def _load(path: str | None) -> Catalog | None:
    """``load_catalog``; prints why not and returns None when the catalog is unusable."""
    try:
        return load_catalog(path)
    except CatalogError as exc:
        _report(exc)
        return None


def _fit(catalog: Catalog, cluster_file: str | None) -> Catalog | None:
    """``fit_to_cluster``; prints why not and returns None when the catalog cannot fit."""
    try:
        return fit_to_cluster(catalog, cluster_file)
    except CatalogError as exc:
        _report(exc)
        return None


def _show_path(model_id: str, path: Path) -> None:
    print(f"  {model_id}: {path}")


def cmd_serve(args: argparse.Namespace) -> int:
    from llmaas.launch import check_tls_files, start_platform, stop_platform

    tls_problems = check_tls_files(args.ssl_keyfile, args.ssl_certfile)
    if tls_problems:
        print("error: " + "\n  ".join(tls_problems), file=sys.stderr)
        return 2
    catalog = _load(args.catalog)
    if catalog is None:
        return 2
    print(f"llmaas: preparing {len(catalog.models)} model(s)")
    started = time.perf_counter()
    prepare(catalog, on_ready=_show_path)
    url = start_platform(
        catalog,
        host=args.host,
        port=args.port,
        address=args.address,
        dashboard=args.dashboard,
        start_timeout_s=args.start_timeout,
        ssl_keyfile=args.ssl_keyfile,
        ssl_certfile=args.ssl_certfile,
    )
    print(
        f"llmaas: serving {', '.join(m.id for m in catalog.models)} on {url} "
        f"(ready in {time.perf_counter() - started:.0f}s)"
    )
    print(f"  curl {url}/v1/models")
    print(f"  OpenAI(base_url='{url}/v1', api_key='none')")
    print("  Ctrl-C stops it.")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    print("llmaas: shutting down")
    stop_platform()
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    catalog = _load(args.catalog)
    if catalog is None:
        return 2
    prepare(catalog, on_ready=_show_path)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    catalog = _load(args.catalog)
    if catalog is None:
        return 2
    catalog = _fit(catalog, args.cluster)
    if catalog is None:
        return 2
    for spec in catalog.models:
        auto = spec.replicas.autoscaling
        replicas = (
            f"replicas={auto.min_replicas}..{auto.max_or_default}"
            if auto
            else f"replicas={spec.replicas.num_replicas or 1}"
        )
        print(
            f"ok  {spec.id:<32} {spec.task.value:<9} tp={spec.tensor_parallel_size} {replicas:<14} "
            f"{spec.source.describe()}"
        )
    try:
        training = training_capacity(catalog, args.cluster)
    except CatalogError as exc:
        _report(exc)
        return 2
    if training is not None:
        print(f"ok  {training.line()}")
        warning = training.warning()
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    import logging

    import ray

    from llmaas.deploy import apply_catalog, deployed_catalog, diff
    from llmaas.launch import wait_catalog

    catalog = _load(args.catalog)
    if catalog is not None:
        catalog = _fit(catalog, args.cluster)
    if catalog is None:
        return 2
    if args.print_serve_config:
        import yaml

        from llmaas.deploy import app_configs

        print(yaml.safe_dump({"applications": app_configs(catalog)}, sort_keys=False), end="")
        return 0
    prepare(catalog, on_ready=_show_path)
    try:
        ray.init(address=args.address, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        print(f"error: no Ray cluster at {args.address} ({exc}); start one: llmaas serve", file=sys.stderr)
        return 2
    if args.dry_run:
        for line in diff(deployed_catalog(catalog.app_name), catalog).lines():
            print(f"  {line}")
        return 0
    try:
        change = apply_catalog(catalog)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"llmaas: deploying {args.catalog} to application {catalog.app_name}:")
    for line in change.lines():
        print(f"  {line}")
    if args.no_wait:
        return 0
    time.sleep(1.0)  # NOTE: the controller marks the app DEPLOYING on its next loop
    wait_catalog(catalog, args.timeout)
    print("llmaas: the platform runs the catalog")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import logging

    import ray

    from llmaas.status import collect, render

    try:
        ray.init(address=args.address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError) as exc:
        print(
            f"error: no Ray cluster at {args.address!r} ({exc}); start one with `llmaas serve`",
            file=sys.stderr,
        )
        return 1
    status = collect(args.app)
    if status is None:
        print(f"error: Serve runs no application {args.app!r} on this cluster", file=sys.stderr)
        return 1
    print(status.model_dump_json(indent=2) if args.json else render(status))
    healthy = status.status == "RUNNING" and all(
        row.status == "HEALTHY" and not row.health_error for row in status.deployments
    )
    return 0 if healthy else 3


def cmd_bench(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from llmaas.bench import BenchConfig
    from llmaas.bench.loadgen import Target
    from llmaas.bench.metrics import Slo
    from llmaas.bench.report import format_report, write_suite_json, write_suite_plot
    from llmaas.bench.suite import (
        ALL_BASELINES,
        COMPARE,
        Baseline,
        compare_catalog,
        deploy_compare,
        parse_settings,
        remove_compare,
        run_suite,
    )
    from llmaas.bench.workloads import WorkloadError
    from llmaas.errors import CatalogEditError, CatalogModelNotFound

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    names = ALL_BASELINES if args.baselines == "all" else tuple(b for b in args.baselines.split(",") if b)
    unknown = [b for b in names if b not in ALL_BASELINES]
    if unknown:
        return fail(f"unknown baseline(s) {unknown}; choose from {', '.join(ALL_BASELINES)}")
    if names and args.workload != "random":
        return fail(f"the baselines run the random workload only: drop --baselines for {args.workload}")
    if args.compare_url and (args.compare_catalog or args.compare_set):
        return fail("--compare-url names a running server: leave out --compare-catalog and --compare-set")
    try:
        config = BenchConfig(
            url=args.url or "http://127.0.0.1:8000",
            model=args.model,
            concurrency=[int(c) for c in args.concurrency.split(",") if c],
            rate=[float(r) for r in args.rate.split(",") if r],
            requests_per_level=args.requests,
            prompt_words=(args.prompt_min, args.prompt_max),
            output_tokens=(args.output_min, args.output_max),
            api_key=args.api_key,
            workload=args.workload,
            prefix_tokens=args.prefix_tokens,
            question_tokens=args.question_tokens,
            turns=args.turns,
            decodes=args.decodes,
            long_prompt_tokens=args.long_prompt_tokens,
            rounds=args.rounds,
            goodput=Slo.parse(args.goodput) if args.goodput else None,
        )
    except (ValidationError, ValueError) as exc:
        return fail(str(exc))
    started_here = args.url is None
    deploying_compare = bool(args.compare_catalog or args.compare_set)
    spec, model_dir, catalog, compare_cat = None, None, None, None
    if started_here or names or args.compare_set:  # the baselines load the model's weights themselves
        catalog = _load(args.catalog)
        if catalog is None:
            return 2
        spec = next((m for m in catalog.models if m.id == args.model), None)
        if spec is None:
            served = ", ".join(m.id for m in catalog.models)
            return fail(f"model {args.model!r} is not in the catalog (it has: {served})")
    if deploying_compare:
        base = _load(args.compare_catalog) if args.compare_catalog else catalog
        if base is None:
            return 2
        try:
            compare_cat = compare_catalog(base, args.model, parse_settings(args.compare_set or []))
        except (ValueError, CatalogEditError, CatalogModelNotFound) as exc:
            return fail(str(exc))
        prepare(compare_cat, on_ready=_show_path)
    if catalog is not None and spec is not None and (started_here or names):
        model_dir = prepare(catalog, on_ready=_show_path)[spec.id]
    if started_here:
        from llmaas.launch import cpus_needed, start_platform

        assert spec is not None and catalog is not None
        # NOTE: room for the serve-batch baseline's replica and the comparison's next to the platform's.
        extra = spec.resources.num_cpus + (cpus_needed(compare_cat) if compare_cat else 0.0)
        config.url = start_platform(catalog, port=args.port, extra_cpus=extra)
    elif "serve-batch" in names or deploying_compare:
        import ray

        ray.init(address="auto", log_to_driver=False)
    baselines: list[Baseline] = [b for b in ALL_BASELINES if b in names]
    levels = [int(c) for c in args.baseline_concurrency.split(",") if c]
    compare: Target | None = None
    source = ""
    try:
        if compare_cat is not None:
            compare = config.target(COMPARE, deploy_compare(compare_cat, config.url))
            source = " ".join(
                [f"catalog {args.compare_catalog or args.catalog or '(embedded default)'}"]
                + [f"with {item}" for item in args.compare_set or []]
            )
        elif args.compare_url:
            compare, source = config.target(COMPARE, args.compare_url.rstrip("/")), args.compare_url
        report = run_suite(config, spec, model_dir, baselines, levels, compare=compare, compare_source=source)
    except WorkloadError as exc:
        return fail(str(exc))
    finally:
        if started_here:
            from llmaas.launch import stop_platform

            stop_platform()
        elif compare_cat is not None:
            remove_compare(compare_cat)
    print(format_report(report))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_suite_json(out / "bench.json", report)
    plotted = write_suite_plot(out / "bench.png", report)
    print(
        f"wrote {out / 'bench.json'}"
        + (f" and {out / 'bench.png'}" if plotted else " (no plot: no closed-loop levels, or no matplotlib)")
    )
    return 1 if any(r.errors for name in ("llmaas", COMPARE) for r in report.results.get(name, [])) else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmaas", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the platform (embedded default unless --catalog)")
    serve_p.add_argument("--catalog", help="catalog YAML (default: the embedded one)")
    serve_p.add_argument("--host", default="127.0.0.1")
    serve_p.add_argument("--port", type=int, default=8000)
    serve_p.add_argument("--address", help="join a running Ray cluster (e.g. 'auto') instead of starting one")
    serve_p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard too")
    serve_p.add_argument("--start-timeout", type=float, default=900.0, help="seconds to wait for replicas")
    serve_p.add_argument(
        "--ssl-certfile", help="serve HTTPS only: PEM certificate (chain) file; needs --ssl-keyfile"
    )
    serve_p.add_argument("--ssl-keyfile", help="PEM private key (unencrypted) of --ssl-certfile")
    serve_p.set_defaults(func=cmd_serve)
    prep_p = sub.add_parser("prepare", help="build or locate every model of a catalog, with progress")
    prep_p.add_argument("--catalog")
    prep_p.set_defaults(func=cmd_prepare)
    check_p = sub.add_parser("check", help="validate a catalog without deploying it")
    check_p.add_argument("--catalog")
    check_p.add_argument(
        "--cluster",
        help=f"a Ray cluster launcher file to check against (default: {BOOTSTRAP_CLUSTER})",
    )
    check_p.set_defaults(func=cmd_check)
    deploy_p = sub.add_parser(
        "deploy",
        help="converge a running platform to a catalog file: add, remove, resize and roll models",
    )
    deploy_p.add_argument("catalog", help="catalog YAML (the whole desired state, like serve deploy)")
    deploy_p.add_argument("--address", default="auto", help="Ray cluster address (default: auto)")
    deploy_p.add_argument(
        "--cluster", help=f"the Ray cluster launcher file the catalog must fit (default: {BOOTSTRAP_CLUSTER})"
    )
    deploy_p.add_argument("--dry-run", action="store_true", help="print what would change, deploy nothing")
    deploy_p.add_argument(
        "--print-serve-config",
        action="store_true",
        help="print the Serve config (applications:) of the catalog, e.g. for KubeRay's serveConfigV2",
    )
    deploy_p.add_argument("--no-wait", action="store_true", help="return once the controller took it")
    deploy_p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the rollout")
    deploy_p.set_defaults(func=cmd_deploy)
    status_p = sub.add_parser(
        "status", help="deployments, replicas and each model's load (exit 0: all healthy, 3: not)"
    )
    status_p.add_argument("--address", default="auto", help="the Ray cluster (default: the local one)")
    status_p.add_argument(
        "--app", default="llmaas", help="the Serve application name (the catalog's app_name)"
    )
    status_p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    status_p.set_defaults(func=cmd_status)
    from llmaas.gateway.admin_cli import add_parsers as add_gateway_parsers

    add_gateway_parsers(sub)
    bench_p = sub.add_parser(
        "bench",
        help="benchmark a model: concurrency sweep and fixed rate over HTTP, plus baselines; JSON + PNG",
    )
    bench_p.add_argument("--model", required=True, help="catalog model id")
    bench_p.add_argument("--catalog", help="catalog YAML or an embedded name (default, bench)")
    bench_p.add_argument(
        "--url", help="a running platform to load (default: start the catalog's platform for the run)"
    )
    bench_p.add_argument("--port", type=int, default=8000, help="port of the platform the run starts")
    bench_p.add_argument("--concurrency", default="1,4,16,32,64", help="closed-loop levels, comma-separated")
    bench_p.add_argument("--rate", default="", help="fixed-rate levels in requests/s, comma-separated")
    bench_p.add_argument(
        "--baselines",
        default="",
        help="'all' or a comma-separated subset of limit,engine,naive,serve-batch,hf-serve",
    )
    bench_p.add_argument(
        "--baseline-concurrency", default="1,4,32", help="closed-loop levels for the server baselines"
    )
    bench_p.add_argument(
        "--requests", type=int, default=64, help="requests per level (at least 2 per stream)"
    )
    bench_p.add_argument("--prompt-min", type=int, default=16)
    bench_p.add_argument("--prompt-max", type=int, default=64)
    bench_p.add_argument("--output-min", type=int, default=32)
    bench_p.add_argument("--output-max", type=int, default=128)
    bench_p.add_argument("--api-key", help="a key for a platform whose catalog has a gateway")
    bench_p.add_argument("--out", default="bench-results")
    work = bench_p.add_argument_group("workload (random: --prompt-min/--prompt-max words)")
    work.add_argument(
        "--workload",
        choices=["random", "shared-prefix", "multi-turn", "long-prompt-interference"],
        default="random",
        help="random prompts (default); one shared system prompt + distinct questions (chat); "
        "conversations resending the whole history (chat); streaming decodes + one long prompt",
    )
    work.add_argument(
        "--prefix-tokens",
        type=int,
        default=1000,
        help="shared-prefix: the shared system prompt; multi-turn: each conversation's opening document",
    )
    work.add_argument(
        "--question-tokens",
        type=int,
        default=32,
        help="the distinct question of a shared-prefix request or a turn; an interference decode's prompt",
    )
    work.add_argument("--turns", type=int, default=4, help="multi-turn: turns per conversation")
    work.add_argument(
        "--decodes", type=int, default=16, help="long-prompt-interference: running streaming decodes"
    )
    work.add_argument(
        "--long-prompt-tokens", type=int, default=2000, help="long-prompt-interference: the long prompt"
    )
    work.add_argument("--rounds", type=int, default=1, help="long-prompt-interference: rounds, pooled")
    bench_p.add_argument(
        "--goodput",
        help="SLOs in ms, e.g. ttft:500,tpot:100 (keys ttft, tpot, e2el): report requests/s meeting all",
    )
    side = bench_p.add_argument_group(
        "side by side: the same workload on a second target, level by level; ratios are this / that"
    )
    side.add_argument("--compare-url", help="a running server to compare with")
    side.add_argument(
        "--compare-catalog",
        help="a catalog whose entry for --model is deployed beside the platform (under /compare)",
    )
    side.add_argument(
        "--compare-set",
        action="append",
        metavar="KEY=VALUE",
        help="a change to --model's entry for the comparison (repeatable, dotted, YAML value), "
        "e.g. batching.max_batch_size=8",
    )
    bench_p.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
