"""The fine-tuning deployment: files, jobs and the job runner, one replica in the front application.

The router hands it the API calls (through a handle) with the caller's key id; it keeps the
records in the gateway's database (where it also reads each key's fine-tuning limits and writes a
ledger row per succeeded job), trains jobs on the cluster through Ray Train and adds each
result to the live catalog through the catalog-admin deployment, then waits until the new model
answers. It takes no CPU of its own: training runs in Ray Train's workers, with the resources the
catalog's ``fine_tuning.resources`` give them.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from llmaas.catalog_edit import CatalogEdit
from llmaas.config.catalog import Catalog, ModelSpec
from llmaas.config.fine_tuning import FineTuningConfig
from llmaas.config.gateway import GatewayConfig
from llmaas.deployments.handles import HandleCatalogAdmin, adapter_ref
from llmaas.engine.types import AdapterRef, GenerationRequest, SamplingParams
from llmaas.errors import NotFound
from llmaas.finetune.data import count_tokens
from llmaas.finetune.files import Files
from llmaas.finetune.jobs import Jobs
from llmaas.finetune.runner import JobRunner
from llmaas.finetune.store import CheckpointRecord, FineTuneStore, JobRecord
from llmaas.finetune.uploads import Upload
from llmaas.gateway.store import Store, open_store
from llmaas.naming import ROUTER, deployment_name, model_app_name
from llmaas.openai.protocol import ModelList
from llmaas.openai.protocol.fine_tuning import (
    CreateFineTuningJob,
    FileDeleted,
    FileList,
    FileObject,
    FineTuningCheckpointList,
    FineTuningEventList,
    FineTuningJob,
    FineTuningJobList,
    ModelDeleted,
)

#: How long a delete waits for the routers to stop routing the model.
REMOVE_TIMEOUT_S = 60.0


def _base_dir(catalog: Catalog) -> Any:
    from llmaas.models import resolve_model_path

    def base_dir(spec: ModelSpec) -> Path:
        return Path(resolve_model_path(spec.source, catalog.cache_path))

    return base_dir


def _counter(catalog: Catalog) -> Any:
    tokenizers: dict[str, Any] = {}

    def count(path: str, kind: str, spec: ModelSpec) -> int:
        from transformers import AutoTokenizer

        tokenizer = tokenizers.get(spec.id)
        if tokenizer is None:
            tokenizer = tokenizers[spec.id] = AutoTokenizer.from_pretrained(_base_dir(catalog)(spec))
        return count_tokens(path, tokenizer, kind)  # type: ignore[arg-type]

    return count


def _files_directory(config: FineTuningConfig) -> Path:
    """Where uploads are kept: under storage_path when it is a directory (a URI is for Ray Train's
    checkpoints; files then stay in the default local directory)."""
    local = config.storage_path if "://" not in config.storage_path else "~/.cache/llmaas/fine-tuning"
    directory = Path(local).expanduser() / "files"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class CatalogRegistrar:
    """Fine-tuned models into and out of the live catalog (the catalog-admin deployment)."""

    def __init__(self, admin: HandleCatalogAdmin, app_name: str) -> None:
        self.admin = admin
        self.app_name = app_name

    async def add(self, entry: dict[str, Any]) -> None:
        await self.admin.change(CatalogEdit(op="put", model_id=entry["id"], body=entry))

    async def remove(self, model_id: str) -> None:
        await self.admin.change(CatalogEdit(op="delete", model_id=model_id))

    async def has(self, model_id: str) -> bool:
        from llmaas import deploy

        catalog = await asyncio.to_thread(deploy.deployed_catalog, self.app_name)
        return catalog is not None and catalog.get(model_id) is not None

    async def wait_ready(self, model_id: str, timeout_s: float) -> None:
        """Until the model answers: its deployment's replicas loaded the weights, or (an adapter) a
        replica of its base loaded the adapter and generated a token with it."""
        from llmaas import deploy

        deadline = time.monotonic() + timeout_s
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                catalog = await asyncio.to_thread(deploy.deployed_catalog, self.app_name)
                spec = catalog.get(model_id) if catalog is not None else None
                if catalog is None or spec is None:
                    raise LookupError(f"{model_id} is not in the deployed catalog yet")
                base = catalog.base_of(spec)
                handle = serve.get_deployment_handle(
                    deployment_name(base.id), model_app_name(self.app_name, base.id)
                )
                ref = adapter_ref(spec)
                await asyncio.wait_for(
                    handle.info.remote() if ref is None else _first_token(handle, ref), timeout=60
                )
                break
            except Exception as exc:  # not deployed yet, still loading
                last = exc
                await asyncio.sleep(2.0)
        else:
            raise TimeoutError(f"the model {model_id} did not answer within {timeout_s:.0f}s: {last}")
        await self.wait_routed([model_id], deadline - time.monotonic())

    async def wait_routed(self, model_ids: list[str], timeout_s: float, *, gone: bool = False) -> None:
        """Until the front application's routers route ``model_ids`` (with ``gone``: no longer
        do): Serve hands them each new catalog (``reconfigure``) after the controller took it, and
        a caller told that a model is ready, or deleted, must find it so."""
        if not model_ids:
            return
        deadline = time.monotonic() + timeout_s
        router = serve.get_deployment_handle(ROUTER, self.app_name)
        pending = set(model_ids)
        while True:
            try:
                status = (await asyncio.to_thread(serve.status)).applications.get(self.app_name)
                listed = await asyncio.wait_for(router.models.remote(), timeout=30)
                if isinstance(listed, ModelList):
                    routed = {m.id for m in listed.data}
                    pending = set(model_ids) & routed if gone else set(model_ids) - routed
                if not pending and status is not None and status.status == "RUNNING":
                    return
            except Exception:  # NOTE: a router replica rolling: ask again
                pass
            if time.monotonic() > deadline:
                state = "still routes" if gone else "does not route"
                raise TimeoutError(f"the router {state} {sorted(pending)} yet")
            await asyncio.sleep(0.5)


async def _first_token(handle: DeploymentHandle, adapter: AdapterRef) -> None:
    """One greedy token with ``adapter`` from a replica of its base (which loads it on the way)."""
    request = GenerationRequest(
        request_id=f"ready-{adapter.name}",
        prompt_token_ids=[0],
        sampling=SamplingParams(max_tokens=1, temperature=0.0),
        adapter=adapter,
    )
    stream: Any = handle.options(stream=True, multiplexed_model_id=adapter.name).generate.remote(request)
    async for chunk in stream:
        if chunk.error:
            raise RuntimeError(chunk.error)


class FineTuningReplica:
    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self, config: FineTuningConfig, gateway: GatewayConfig | None, app_name: str, admin: DeploymentHandle
    ) -> None:
        self.config = config
        self.app_name = app_name
        directory = await asyncio.to_thread(_files_directory, config)
        self.upload_dir = directory
        gateway_database = gateway.database if gateway is not None else None
        url = config.database_url(gateway_database)
        self.store = await asyncio.to_thread(FineTuneStore.open, url)
        # NOTE: keys' limits and the ledger's rows live in the gateway's database: the same store
        # when fine-tuning keeps its records there (the default), else a store of its own.
        self.accounts: Store | None = None
        if gateway is not None:
            same = url == gateway.database
            self.accounts = self.store.db if same else await asyncio.to_thread(open_store, gateway.database)
        self.ledger = self.accounts if gateway is not None and gateway.ledger else None
        self.files = Files(self.store, directory)
        self.registrar = CatalogRegistrar(HandleCatalogAdmin(admin), app_name)
        self.jobs: Jobs | None = None
        self.runner: JobRunner | None = None
        self.catalog: Catalog | None = None

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """The deployed catalog (Serve's ``user_config``): base models and their settings. The jobs
        and their runner are made with the first one, and read each later one."""
        catalog = Catalog.model_validate(config["catalog"])
        if catalog == self.catalog:
            return
        from llmaas.finetune.train import start_training

        self.catalog = catalog
        if self.jobs is not None and self.runner is not None:
            # NOTE: the jobs go on: a change is often a job's own model joining the catalog while
            # that job waits for it to answer (rebuilding the runner would queue the job again)
            self.jobs.catalog = self.runner.catalog = catalog
            return
        jobs = Jobs(
            self.config,
            catalog,
            self.store,
            self.files,
            _counter(catalog),
            keys=self.accounts,
            ledger=self.ledger,
        )
        runner = JobRunner(self.config, catalog, jobs, self.registrar, start_training, _base_dir(catalog))
        jobs.wake = runner.wake
        self.jobs, self.runner = jobs, runner
        runner.start_loop()
        await runner.recover()

    def _jobs(self) -> Jobs:
        if self.jobs is None:
            raise NotFound("fine-tuning is starting: try again in a moment", code="not_ready")
        return self.jobs

    # ---- files -----------------------------------------------------------------------------------
    def upload_directory(self) -> str:
        return str(self.upload_dir)

    async def add_file(self, upload: Upload, owner: str | None) -> FileObject:
        return await self.files.add(upload, owner)

    async def list_files(self, owner: str | None, admin: bool, query: dict[str, Any]) -> FileList:
        return await self.files.list(owner, admin, **query)

    async def get_file(self, file_id: str, owner: str | None, admin: bool) -> FileObject:
        return await self.files.get(file_id, owner, admin)

    async def file_path(self, file_id: str, owner: str | None, admin: bool) -> str:
        return str(await self.files.content(file_id, owner, admin))

    async def delete_file(self, file_id: str, owner: str | None, admin: bool) -> FileDeleted:
        return await self.files.delete(file_id, owner, admin)

    # ---- jobs ------------------------------------------------------------------------------------
    async def create_job(self, request: CreateFineTuningJob, owner: str | None, admin: bool) -> FineTuningJob:
        return await self._jobs().create(request, owner, admin)

    async def list_jobs(self, owner: str | None, admin: bool, query: dict[str, Any]) -> FineTuningJobList:
        return await self._jobs().list(owner, admin, **query)

    async def get_job(self, job_id: str, owner: str | None, admin: bool) -> FineTuningJob:
        return await self._jobs().get(job_id, owner, admin)

    async def cancel_job(self, job_id: str, owner: str | None, admin: bool) -> FineTuningJob:
        runner = self.runner
        assert runner is not None
        return await self._jobs().cancel(job_id, owner, admin, runner.stop)

    async def job_events(
        self, job_id: str, owner: str | None, admin: bool, query: dict[str, Any]
    ) -> FineTuningEventList:
        return await self._jobs().events(job_id, owner, admin, **query)

    async def job_checkpoints(
        self, job_id: str, owner: str | None, admin: bool, query: dict[str, Any]
    ) -> FineTuningCheckpointList:
        return await self._jobs().checkpoints(job_id, owner, admin, **query)

    # ---- models ----------------------------------------------------------------------------------
    async def delete_model(self, model_id: str, owner: str | None, admin: bool) -> ModelDeleted:
        """Remove a fine-tuned model of ``owner``'s, or one of its checkpoints, from the catalog
        (its job stays, listed); a model goes with its checkpoints."""
        owned = await self._jobs().all(owner, admin)
        jobs = [j for j in owned if j.fine_tuned_model == model_id]
        points = [
            p
            for job in owned
            for p in await asyncio.to_thread(self.store.of_job, CheckpointRecord, job.id)
            if p.served and (job.fine_tuned_model == model_id or p.fine_tuned_model_checkpoint == model_id)
        ]
        if not jobs and not points:
            raise NotFound(
                f"No fine-tuned model '{model_id}' of yours", param="model", code="model_not_found"
            )
        for point in points:
            await self.registrar.remove(point.fine_tuned_model_checkpoint)
            point.served = False  # NOTE: a restart must not serve it again
            await asyncio.to_thread(self.store.put, point)
        if jobs:
            await self.registrar.remove(model_id)
        for job in jobs:
            job.result_path = None
            await asyncio.to_thread(self.store.put, job)
        removed = [p.fine_tuned_model_checkpoint for p in points] + ([model_id] if jobs else [])
        await self.registrar.wait_routed(removed, REMOVE_TIMEOUT_S, gone=True)
        return ModelDeleted(id=model_id, deleted=True)

    def check_health(self) -> None:
        pass

    async def __del__(self) -> None:
        if self.runner is not None:
            await self.runner.stop_loop()


__all__ = ["CatalogRegistrar", "FineTuningReplica", "JobRecord"]
