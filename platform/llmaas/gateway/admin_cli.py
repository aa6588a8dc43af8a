"""``llmaas keys`` and ``llmaas usage``: keys and the ledger, straight from the gateway's database.

The operator's side, run where the database is reachable (the head node, or with a
``postgresql://`` URL); callers of a running platform use the admin routes instead.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime, timezone

from pydantic import ValidationError

from llmaas.gateway.keys import ApiKey, KeyRequest, make_key
from llmaas.gateway.store import Store, open_store

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``24h``, ``30d``, ``2w`` -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use e.g. 90s, 15m, 24h, 30d, 2w")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def database_url(args: argparse.Namespace) -> str | None:
    """``--database``, else the catalog's gateway database; prints why not and returns None."""
    if args.database:
        return str(args.database)
    from llmaas.api import CatalogError, load_catalog

    try:
        catalog = load_catalog(args.catalog)
    except CatalogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    if catalog.gateway is None:
        print(
            f"error: the catalog {args.catalog or '(embedded default)'} has no gateway section, so it keeps "
            "no keys or usage; add `gateway: {}` to it (README: API keys and usage), or pass --database",
            file=sys.stderr,
        )
        return None
    return catalog.gateway.database


def _open(args: argparse.Namespace) -> Store | None:
    url = database_url(args)
    if url is None:
        return None
    try:
        return open_store(url)
    except Exception as exc:
        print(f"error: cannot open the gateway database {url}: {exc}", file=sys.stderr)
        return None


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _key_line(key: ApiKey) -> str:
    state = key.usable() or "active"
    limits = ", ".join(
        part
        for part in (
            f"rpm {key.rpm}" if key.rpm else "",
            f"tpm {key.tpm}" if key.tpm else "",
            f"ft jobs {key.max_fine_tuning_jobs}" if key.max_fine_tuning_jobs else "",
            f"trained {key.max_trained_tokens}" if key.max_trained_tokens else "",
            "admin" if key.admin else "",
        )
        if part
    )
    models = ",".join(key.models) if key.models else "*"
    return (
        f"{key.id:<21} {key.name:<16} {key.prefix + '...':<15} {state:<8} {models:<24} "
        f"{limits or '-':<22} {_when(key.expires_at)}"
    )


def cmd_keys(args: argparse.Namespace) -> int:
    store = _open(args)
    if store is None:
        return 2
    try:
        if args.action == "create":
            try:
                request = KeyRequest(
                    name=args.name,
                    models=args.models.split(",") if args.models else None,
                    rpm=args.rpm,
                    tpm=args.tpm,
                    max_fine_tuning_jobs=args.max_fine_tuning_jobs,
                    max_trained_tokens=args.max_trained_tokens,
                    admin=args.admin,
                    expires_in_s=args.expires,
                )
            except ValidationError as exc:
                for err in exc.errors(include_url=False):
                    where = ".".join(str(p) for p in err["loc"])
                    print(f"error: {where}: {err['msg']}", file=sys.stderr)
                return 2
            made = make_key(request)
            store.create_key(made.key)
            if args.json:
                print(json.dumps({**made.key.public(), "secret": made.secret}))
            else:
                print(f"created {made.key.id} ({made.key.name}); the key, shown only now:")
                print(made.secret)
            return 0
        if args.action == "revoke":
            if not store.revoke_key(args.key_id, time.time()):
                print(f"error: no active key has the id {args.key_id!r}", file=sys.stderr)
                return 1
            print(f"revoked {args.key_id}")
            return 0
        keys = store.all_keys()
        if args.json:
            print(json.dumps([k.public() for k in keys], indent=2))
            return 0
        print(f"{'id':<21} {'name':<16} {'key':<15} {'state':<8} {'models':<24} {'limits':<22} expires")
        for key in keys:
            print(_key_line(key))
        return 0
    finally:
        store.close()


def cmd_usage(args: argparse.Namespace) -> int:
    store = _open(args)
    if store is None:
        return 2
    try:
        since = time.time() - args.since if args.since else 0.0
        rows = store.usage(since)
        names = {k.id: k.name for k in store.all_keys()}
    finally:
        store.close()
    if args.json:
        print(json.dumps([r.model_dump() for r in rows], indent=2))
        return 0
    print(
        f"{'key':<21} {'name':<16} {'model':<24} {'requests':>9} {'errors':>7} {'prompt tok':>11} "
        f"{'completion tok':>15} {'mean ms':>9} {'ft jobs':>8} {'trained tok':>12}"
    )
    for r in rows:
        key = r.key_id or "(no key)"
        print(
            f"{key:<21} {names.get(r.key_id or '', '-'):<16} {r.model:<24} {r.requests:>9} {r.errors:>7} "
            f"{r.prompt_tokens:>11} {r.completion_tokens:>15} {r.mean_latency_ms:>9.1f} "
            f"{r.fine_tuning_jobs:>8} {r.trained_tokens:>12}"
        )
    if not rows:
        print("(no requests in this range)")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``keys`` and ``usage`` subcommands of ``llmaas``."""

    def database_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--catalog", help="catalog whose gateway.database to use (default: the embedded one)")
        p.add_argument("--database", help="sqlite:///PATH or postgresql://... (overrides --catalog)")
        p.add_argument("--json", action="store_true", help="print JSON")

    keys_p = sub.add_parser(
        "keys",
        help="create, list or revoke API keys (stored as hashes in the gateway's database)",
        description="Examples:\n  llmaas keys create --catalog prod.yaml --name alice --models m1,m2 "
        "--rpm 60 --tpm 20000 --expires 30d\n"
        "  llmaas keys create --catalog prod.yaml --name team-b --max-fine-tuning-jobs 2 "
        "--max-trained-tokens 50000000\n  llmaas keys create --catalog prod.yaml --name ops --admin\n"
        "  llmaas keys list --catalog prod.yaml\n  llmaas keys revoke --catalog prod.yaml key_0123abcd",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = keys_p.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key and print its secret (shown once)")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--models", help="comma-separated model ids it may call (default: all)")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="prompt + completion tokens per minute")
    create.add_argument(
        "--max-fine-tuning-jobs",
        type=int,
        help="fine-tuning jobs queued or running at once (default: no limit)",
    )
    create.add_argument(
        "--max-trained-tokens",
        type=int,
        help="tokens its fine-tuning jobs may train on in all, succeeded and unfinished (default: no limit)",
    )
    create.add_argument("--admin", action="store_true", help="may use the admin routes (/admin/...)")
    create.add_argument("--expires", type=parse_duration, help="lifetime, e.g. 30d or 12h (default: none)")
    database_options(create)
    listing = actions.add_parser("list", help="every key, its limits and state (never the secrets)")
    database_options(listing)
    revoke = actions.add_parser("revoke", help="revoke a key (takes effect within gateway.key_refresh_s)")
    revoke.add_argument("key_id")
    database_options(revoke)
    keys_p.set_defaults(func=cmd_keys)

    usage_p = sub.add_parser(
        "usage",
        help="requests, tokens and fine-tuning jobs' trained tokens per key and model, from the usage ledger",
        description="Examples:\n  llmaas usage --catalog prod.yaml --since 24h\n"
        "  llmaas usage --database postgresql://llmaas@db/llmaas --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    usage_p.add_argument("--since", type=parse_duration, help="only the last ..., e.g. 24h (default: all)")
    database_options(usage_p)
    usage_p.set_defaults(func=cmd_usage)
