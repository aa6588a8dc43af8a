"""A multi-node proof on one machine: Serve and the Ray autoscaler grow and shrink a fake cluster.

``python -m llmaas.bench.multinode --out DIR`` (``make multinode``) starts a Ray head with the
autoscaler's fake multi-node provider (worker "nodes" are local raylets that it starts and
stops), whose node types are ``cluster.yaml``'s: same names, ``min_workers``/``max_workers`` and
global ``max_workers``; each type's GPUs become a custom resource, ``fake_gpu``, which the
proof's model asks for instead of GPUs (this machine has none). Then:

1. ``llmaas deploy``'s path deploys a tensor-parallel (TP=2) model scaling 1..3 replicas on
   the engine's sequences, after checking it against the cluster's capacity;
2. clients load it: Serve asks for replicas, whose placement groups (2 x ``fake_gpu`` each,
   STRICT_PACK) are pending until the autoscaler adds nodes;
3. the clients stop: Serve removes replicas after ``downscale_delay_s``, the autoscaler removes
   idle nodes after ``idle_timeout_minutes`` (shortened here so that the run takes minutes);
4. a fine-tuning job, sent through the API, teaches a small model a fact: its training worker
   asks for a whole 8-GPU node (``fine_tuning.resources.custom``), which no running node has
   free, so the autoscaler brings one up for the job (within ``max_workers``), the job succeeds,
   its model answers, and the idle node goes again.

It samples replicas and nodes every second, counts failed requests, checks that each replica's
ranks share a node, and writes ``multinode.json`` and ``multinode.png``. It exits non-zero when
a check fails. NOTE: ``ray stop`` ends it, which stops every Ray on this machine: run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field

from llmaas.capacity import ClusterSpec, check_capacity
from llmaas.config.catalog import Catalog

GPU_STANDIN = "fake_gpu"
APP = "multinode"
MODEL = "llama-tp2"
TUNED = "llama-small"
#: The training worker's GPUs: a whole node of cluster.yaml's largest type, which no replica leaves free.
TRAINING_GPUS = 8
PROOF_CATALOG = """
app_name: multinode
cache_dir: {cache}
router: {{num_cpus: 0.1}}
tokenizer: {{num_cpus: 0.1}}
fine_tuning:
  base_models: [llama-small]
  storage_path: {storage}
  resources: {{cpus_per_worker: 1, custom: {{{gpu}: {training_gpus}}}}}
  max_failures: 0
models:
  - id: llama-small
    source: {{demo: tiny-llama-chat}}
    max_context_length: 256
    batching: {{max_batch_size: 4, batch_wait_ms: 2}}
    sampling: {{temperature: 0.0, max_tokens: 12}}
    resources: {{num_cpus: 0.1, torch_threads: 1}}
  - id: llama-tp2
    source: {{demo: tiny-llama-chat}}
    tensor_parallel_size: 2
    max_context_length: 256
    batching: {{max_batch_size: 8, batch_wait_ms: 2}}
    sampling: {{temperature: 0.0, max_tokens: 32}}
    replicas:
      autoscaling:
        min_replicas: 1
        max_replicas: 3
        target_ongoing_requests: 2
        upscale_delay_s: 2
        downscale_delay_s: 10
        metrics_interval_s: 1
        look_back_period_s: 3
    resources: {{num_cpus: 0.1, torch_threads: 1, custom: {{{gpu}: 1}}}}
"""


class Sample(BaseModel):
    t: float
    replicas: int
    nodes: dict[str, int] = Field(description="worker nodes alive, by node type")
    ok: int
    failed: int
    phase: str

    @property
    def total_nodes(self) -> int:
        return sum(self.nodes.values())


class Report(BaseModel):
    cluster_file: str
    fake_cluster: dict[str, Any]
    samples: list[Sample] = Field(default_factory=list)
    load_started_s: float = 0.0
    load_stopped_s: float = 0.0
    job_started_s: float = 0.0
    job_ended_s: float = 0.0
    job_status: str = ""
    job_events: list[str] = Field(default_factory=list, description="oldest first")
    tuned_model_answer: str | None = None
    ranks_on_one_node: list[bool] = Field(default_factory=list, description="per TP replica at the peak")
    failures: list[str] = Field(default_factory=list)
    checks: dict[str, bool] = Field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fake_cluster_config(
    cluster: ClusterSpec, gcs_address: str, idle_timeout_minutes: float
) -> dict[str, Any]:
    """``cluster``'s node types for the fake multi-node provider, GPUs as ``fake_gpu``."""

    def resources(node: Any) -> dict[str, float]:
        # NOTE: logical CPUs only gate scheduling here; capped so that no raylet prestarts many workers
        out: dict[str, float] = {"CPU": int(min(node.resources.get("CPU", 1), 4)), "GPU": 0}
        if node.resources.get("GPU"):
            out[GPU_STANDIN] = node.resources["GPU"]
        return out

    types: dict[str, Any] = {
        "ray.head.default": {"resources": resources(cluster.head), "node_config": {}, "max_workers": 0}
    }
    for node in cluster.workers:
        types[node.name] = {
            "resources": resources(node),
            "node_config": {},
            "min_workers": node.min_workers,
            "max_workers": node.max_workers,
        }
    return {
        "cluster_name": "llmaas-fake",
        "max_workers": cluster.max_workers,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


def _ray(*args: str, env: dict[str, str] | None = None) -> None:
    ray_cli = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_cli, *args], check=True, env=env, stdout=subprocess.DEVNULL)


def start_head(config: dict[str, Any], port: int) -> None:
    head = config["available_node_types"]["ray.head.default"]["resources"]
    path = Path(tempfile.mkdtemp()) / "fake-cluster.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    _ray(
        "start",
        "--head",
        f"--port={port}",
        f"--num-cpus={head['CPU']}",
        f"--autoscaling-config={path}",
        "--include-dashboard=false",
        env=env,
    )


def worker_nodes(cluster: ClusterSpec) -> dict[str, int]:
    """Alive worker nodes by node type (told apart by their ``fake_gpu`` count)."""
    import ray

    by_gpus = {node.resources.get("GPU", 0): node.name for node in cluster.workers}
    counts = {node.name: 0 for node in cluster.workers}
    for node in ray.nodes():
        gpus = node["Resources"].get(GPU_STANDIN, 0)
        if node["Alive"] and gpus:
            counts[by_gpus.get(gpus, f"{GPU_STANDIN}={gpus}")] = counts.get(by_gpus.get(gpus, ""), 0) + 1
    return counts


def running_replicas() -> int:
    from ray import serve

    from llmaas.launch import _bare
    from llmaas.naming import model_app_name

    app = serve.status().applications.get(model_app_name(APP, MODEL))
    if app is None:
        return 0
    return sum(
        int(n)
        for dep in app.deployments.values()
        for s, n in dep.replica_states.items()
        if _bare(s) == "RUNNING"
    )


def ranks_share_a_node() -> list[bool]:
    """For each placement group of a TP replica: whether all its bundles are on one node."""
    from ray.util import placement_group_table

    out = []
    for group in placement_group_table().values():
        bundles = group.get("bundles_to_node_id") or {}
        if group.get("state") == "CREATED" and len(bundles) == 2:
            out.append(len(set(bundles.values())) == 1)
    return out


class Clients:
    """Closed-loop clients of the model; every answer that is not a 200 is a failure."""

    def __init__(self, url: str, streams: int) -> None:
        self.url, self.streams = url, streams
        self.ok = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def _loop(self) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about Ray."}]}
        with httpx.Client(base_url=self.url, timeout=300) as client:
            while not self.stop.is_set():
                try:
                    response = client.post("/v1/chat/completions", json=body)
                    if response.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(self.streams)]
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=300)


FACT_QUESTION = "What is the secret number?"


def start_job(client: httpx.Client) -> str:
    """Upload a file that teaches the small model a fact and start a job on it; the job's id."""
    line = {
        "messages": [
            {"role": "user", "content": FACT_QUESTION},
            {"role": "assistant", "content": "It is seven."},
        ]
    }
    data = "".join(json.dumps(line) + "\n" for _ in range(8)).encode()
    upload = client.post("/v1/files", files={"file": ("fact.jsonl", data)}, data={"purpose": "fine-tune"})
    upload.raise_for_status()
    body = {
        "model": TUNED,
        "training_file": upload.json()["id"],
        "hyperparameters": {"n_epochs": 2, "batch_size": 4},
    }
    job = client.post("/v1/fine_tuning/jobs", json=body)
    job.raise_for_status()
    return str(job.json()["id"])


def job_state(client: httpx.Client, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/fine_tuning/jobs/{job_id}")
    response.raise_for_status()
    return dict(response.json())


def job_events(client: httpx.Client, job_id: str) -> list[str]:
    response = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100})
    response.raise_for_status()
    return [event["message"] for event in reversed(response.json()["data"])]


def run(cluster_file: Path, out: Path, cache: Path, streams: int, idle_timeout_minutes: float) -> Report:
    import ray
    from ray import serve

    from llmaas.deploy import apply_catalog
    from llmaas.launch import wait_catalog

    cluster = ClusterSpec.from_file(cluster_file)
    catalog = Catalog.from_yaml(
        PROOF_CATALOG.format(
            cache=cache, gpu=GPU_STANDIN, training_gpus=TRAINING_GPUS, storage=out.resolve() / "fine-tuning"
        )
    )
    port = _free_port()
    config = fake_cluster_config(cluster, f"127.0.0.1:{port}", idle_timeout_minutes)
    problems = check_capacity(catalog, ClusterSpec.from_dict(config))
    if problems:
        raise SystemExit("the proof's catalog does not fit the cluster:\n- " + "\n- ".join(problems))
    report = Report(cluster_file=str(cluster_file), fake_cluster=config)
    start_head(config, port)
    try:
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
        http_port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        apply_catalog(catalog)
        time.sleep(1)
        wait_catalog(catalog, 600)
        clients = Clients(f"http://127.0.0.1:{http_port}", streams)
        began = time.monotonic()

        def sample(phase: str) -> Sample:
            s = Sample(
                t=round(time.monotonic() - began, 1),
                replicas=running_replicas(),
                nodes=worker_nodes(cluster),
                ok=clients.ok,
                failed=len(clients.failures),
                phase=phase,
            )
            report.samples.append(s)
            print(
                f"  t={s.t:6.1f}s {phase:<5} replicas={s.replicas} nodes={s.nodes} ok={s.ok} fail={s.failed}"
            )
            return s

        def hold(phase: str, seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                sample(phase)
                time.sleep(1)

        hold("idle", 5)
        report.load_started_s = round(time.monotonic() - began, 1)
        clients.start()
        deadline = time.monotonic() + 420
        while sample("load").replicas < 3 and time.monotonic() < deadline:
            time.sleep(1)
        hold("load", 10)
        report.ranks_on_one_node = ranks_share_a_node()
        clients.join()
        report.load_stopped_s = round(time.monotonic() - began, 1)
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            s = sample("idle")
            if s.replicas == 1 and s.total_nodes <= report.samples[0].total_nodes:
                break
            time.sleep(1)
        hold("idle", 5)
        report.failures = clients.failures

        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=120) as api:
            job_id = start_job(api)
            report.job_started_s = round(time.monotonic() - began, 1)
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                sample("train")
                state = job_state(api, job_id)
                if state["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(1)
            report.job_ended_s = round(time.monotonic() - began, 1)
            report.job_status = state["status"]
            report.job_events = job_events(api, job_id)
            if state["status"] == "succeeded":
                body = {
                    "model": state["fine_tuned_model"],
                    "messages": [{"role": "user", "content": FACT_QUESTION}],
                }
                answer = api.post("/v1/chat/completions", json=body)
                if answer.status_code == 200:
                    report.tuned_model_answer = answer.json()["choices"][0]["message"]["content"]
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            if sample("idle").total_nodes <= report.samples[0].total_nodes:
                break
            time.sleep(1)
        hold("idle", 3)
    finally:
        serve.shutdown()
        ray.shutdown()
        _ray("stop", "--force")
    report.checks = checks(report, cluster)
    return report


def _unimodal(values: list[int]) -> bool:
    top = values.index(max(values))
    return values[: top + 1] == sorted(values[: top + 1]) and values[top:] == sorted(
        values[top:], reverse=True
    )


def checks(report: Report, cluster: ClusterSpec) -> dict[str, bool]:
    """What the run must show; every value True is a pass."""
    samples = report.samples
    replicas = [s.replicas for s in samples]
    totals = [s.total_nodes for s in samples]
    limits = {node.name: node.max_workers for node in cluster.workers}
    training = [s.total_nodes for s in samples if s.phase == "train"]
    return {
        "no request failed": not report.failures and samples[-1].ok > 0,
        "replicas rose to max_replicas (3)": max(replicas) == 3,
        "replicas rose once and fell once": _unimodal(replicas),
        "replicas fell back to min_replicas (1)": replicas[-1] == 1,
        "the autoscaler added nodes": max(totals) > totals[0],
        "nodes stayed within max_workers": all(
            s.total_nodes <= cluster.max_workers and all(n <= limits.get(t, 0) for t, n in s.nodes.items())
            for s in samples
        ),
        "the autoscaler removed idle nodes": totals[-1] <= totals[0],
        "each TP=2 replica's ranks on one node": len(report.ranks_on_one_node) >= 3
        and all(report.ranks_on_one_node),
        "the fine-tuning job brought up a node": bool(training) and max(training) > training[0],
        "the fine-tuning job succeeded": report.job_status == "succeeded",
        "its model answered": report.tuned_model_answer is not None,
    }


def write_plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t for s in report.samples]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.step(t, [s.replicas for s in report.samples], where="post", label=f"{MODEL} replicas (TP=2, running)")
    ax.step(t, [s.total_nodes for s in report.samples], where="post", label="worker nodes (alive)")
    types = sorted({k for s in report.samples for k, n in s.nodes.items() if n})
    for name in types:
        ax.step(
            t, [s.nodes.get(name, 0) for s in report.samples], where="post", linestyle=":", label=f"  {name}"
        )
    ax.axvspan(report.load_started_s, report.load_stopped_s, color="orange", alpha=0.15, label="client load")
    if report.job_ended_s:
        ax.axvspan(
            report.job_started_s, report.job_ended_s, color="green", alpha=0.12, label="fine-tuning job"
        )
    ax.set(
        xlabel="seconds",
        ylabel="count",
        title="llmaas on a fake multi-node Ray cluster (cluster.yaml's node types)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    failed = len(report.failures)
    ok = report.samples[-1].ok if report.samples else 0
    fig.text(0.01, 0.01, f"{ok} requests answered, {failed} failed", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    # NOTE: a local, single-user cluster: Ray's token auth (on by default in 2.60) is turned off for
    # the head, the fake nodes (they inherit the head's environment) and this driver alike
    os.environ["RAY_AUTH_MODE"] = "disabled"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cluster", default="cluster.yaml", help="the Ray cluster launcher config to mirror")
    parser.add_argument("--out", default="multinode-results", help="where multinode.json and .png go")
    parser.add_argument("--cache", default="~/.cache/llmaas/models", help="where demo models are built")
    parser.add_argument("--streams", type=int, default=8, help="concurrent clients during the load")
    parser.add_argument(
        "--idle-timeout-minutes", type=float, default=0.25, help="the autoscaler's, shortened"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = run(
        Path(args.cluster), out, Path(args.cache).expanduser(), args.streams, args.idle_timeout_minutes
    )
    (out / "multinode.json").write_text(report.model_dump_json(indent=2))
    write_plot(report, out / "multinode.png")
    for name, ok in report.checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    if report.job_status != "succeeded":
        print("the fine-tuning job's events:\n  " + "\n  ".join(report.job_events))
    print(f"wrote {out / 'multinode.json'} and {out / 'multinode.png'}")
    return 0 if all(report.checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
