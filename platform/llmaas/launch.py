"""Start and stop the platform from Python: Ray, Serve's HTTP proxy, and the catalog's application."""

from __future__ import annotations

import math
import os
import ssl
import time
from pathlib import Path
from typing import Any

from llmaas.config.catalog import Catalog
from llmaas.naming import is_model_app
from llmaas.plan import plan_catalog


def cpus_needed(catalog: Catalog) -> float:
    """Logical CPUs the catalog's replicas ask Ray for at their initial sizes (its plan's), and its
    fine-tuning jobs at most (they never take a replica's)."""
    tuning = catalog.fine_tuning
    jobs = 0.0
    if tuning is not None:
        jobs = tuning.max_concurrent_jobs * tuning.resources.num_workers * tuning.resources.cpus_per_worker
    return plan_catalog(catalog).cpus_needed() + jobs


def target_replicas(catalog: Catalog) -> dict[str, int]:
    """Replicas each Serve deployment of the catalog starts with, by deployment name."""
    return plan_catalog(catalog).targets()


def check_tls_files(
    ssl_keyfile: str | None, ssl_certfile: str | None, ssl_keyfile_password: str | None = None
) -> list[str]:
    """Problems with a TLS key and certificate (empty when usable, or when neither is given).

    Loads the pair the way the HTTP proxy will, so a missing, unreadable, mismatched or
    password-protected file is reported here, before Ray starts, naming the file.
    """
    if not ssl_keyfile and not ssl_certfile:
        return []
    if not ssl_keyfile or not ssl_certfile:
        return [
            "HTTPS needs both a certificate and its private key: give --ssl-certfile and --ssl-keyfile "
            f"(only {'the certificate ' + ssl_certfile if ssl_certfile else 'the key ' + str(ssl_keyfile)})"
        ]
    problems = []
    for kind, path in (("TLS private key", ssl_keyfile), ("TLS certificate", ssl_certfile)):
        try:
            Path(path).read_bytes()
        except OSError as exc:
            problems.append(f"cannot read the {kind} {path}: {exc.strerror or exc}")
    if problems:
        return problems
    try:
        # NOTE: a callable password never prompts on the terminal for an encrypted key.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            ssl_certfile, ssl_keyfile, password=lambda: ssl_keyfile_password or ""
        )
    except ssl.SSLError as exc:
        return [
            f"the TLS certificate {ssl_certfile} and private key {ssl_keyfile} are not a usable pair: "
            f"PEM files, the key matching the certificate and unencrypted or with its password "
            f"({exc.reason or exc})"
        ]
    return []


def start_platform(
    catalog: Catalog,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    dashboard: bool = False,
    start_timeout_s: float = 900.0,
    extra_cpus: float = 0.0,
    ssl_keyfile: str | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile_password: str | None = None,
) -> str:
    """Deploy ``catalog`` (starting Ray unless ``address`` names a cluster); return the base URL.

    With ``ssl_keyfile`` and ``ssl_certfile`` (PEM files) Serve's proxy speaks HTTPS only. Raises
    ``ValueError`` naming the file when they are unusable, before Ray starts.
    """
    problems = check_tls_files(ssl_keyfile, ssl_certfile, ssl_keyfile_password)
    if problems:
        raise ValueError("; ".join(problems))

    import ray
    from ray import serve

    from llmaas.deploy import apply_catalog

    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # NOTE: Ray schedules by logical CPUs; on a small machine the default catalog's fractional
        # CPUs may add up past the cores, so declare at least what it needs. "local" starts a new
        # instance even where RAY_ADDRESS or a `ray start` on this machine names another.
        cpus = max(os.cpu_count() or 1, math.ceil(cpus_needed(catalog) + extra_cpus))
        ray.init(address="local", num_cpus=cpus, include_dashboard=dashboard, log_to_driver=False)
    http_options: dict[str, Any] = {"host": host, "port": port}
    if ssl_keyfile and ssl_certfile:
        # NOTE: the proxy actor opens these, from its own working directory: absolute paths.
        http_options["ssl_keyfile"] = str(Path(ssl_keyfile).resolve())
        http_options["ssl_certfile"] = str(Path(ssl_certfile).resolve())
        if ssl_keyfile_password:
            http_options["ssl_keyfile_password"] = ssl_keyfile_password
    serve.start(http_options=http_options)
    print("llmaas: starting replicas (router, tokenizer, models)")
    # NOTE: a declarative deploy (as `serve deploy`), so that a later `llmaas deploy` of another
    # catalog rolls only what changed; it returns at once and wait_running shows replicas starting.
    apply_catalog(catalog)
    wait_catalog(catalog, start_timeout_s)
    scheme = "https" if ssl_keyfile and ssl_certfile else "http"
    return f"{scheme}://{host}:{port}"


def wait_catalog(catalog: Catalog, timeout_s: float) -> None:
    """Wait until the catalog's applications (front and models) run every replica they start with."""
    from ray import serve

    plan = plan_catalog(catalog)
    apps = plan.app_names()
    deadline = time.monotonic() + timeout_s
    wait_running(apps, timeout_s=timeout_s, targets=plan.targets(), labels=plan.labels())
    # NOTE: and the applications of removed models are gone (their replicas drained)
    while time.monotonic() < deadline:
        left = [a for a in serve.status().applications if is_model_app(catalog.app_name, a) and a not in apps]
        if not left:
            return
        time.sleep(1)
    raise SystemExit(f"llmaas: removed models' applications still running after {timeout_s:.0f}s")


def stop_platform() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def wait_running(
    apps: str | list[str],
    timeout_s: float,
    *,
    targets: dict[str, int] | None = None,
    labels: dict[str, str] | None = None,
) -> None:
    """Wait until Serve reports every application of ``apps`` RUNNING, showing replicas starting.

    ``targets`` (deployment -> replicas, see ``target_replicas``) sets what "all running" means;
    without it, the replicas Serve reports so far. Exits with a message on failure or timeout.
    """
    from ray import serve

    from llmaas.progress import ProgressBar, replica_progress

    names = [apps] if isinstance(apps, str) else apps
    progress = ProgressBar(names[0], total=sum((targets or {}).values()), unit="replica", steps=None)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            statuses = serve.status().applications
            states = {
                name: _bare(statuses[name].status) if name in statuses else "NOT_STARTED" for name in names
            }
            replicas = {
                deployment: {_bare(s): int(n) for s, n in dep.replica_states.items()}
                for name in names
                if name in statuses
                for deployment, dep in statuses[name].deployments.items()
            }
            running, target, message = replica_progress(replicas, targets or {}, labels)
            pending = {name: state for name, state in states.items() if state != "RUNNING"}
            if pending and running >= target:
                message += " (" + ", ".join(f"{n} {st.lower()}" for n, st in pending.items()) + ")"
            progress.set_total(target)
            progress(message, running / target if target else 0.0)
            if not pending:
                return
            failed = [name for name, state in pending.items() if state == "DEPLOY_FAILED"]
            if failed:
                reasons = "; ".join(f"{name}: {statuses[name].message}" for name in failed)
                raise SystemExit(f"llmaas: deployment failed: {reasons}")
            time.sleep(1)
    finally:
        progress.close()
    raise SystemExit(f"llmaas: {', '.join(names)} not running after {timeout_s:.0f}s")


def _bare(value: Any) -> str:
    """Serve's enums (``ReplicaState.RUNNING``) as their bare names."""
    return str(getattr(value, "value", value)).split(".")[-1]
