"""HTTPS: ``llmaas serve --ssl-certfile/--ssl-keyfile`` serves the API over TLS only.

Serve's HTTP options are fixed per cluster and the session's cluster (conftest.py) speaks plain
HTTP, so the HTTPS platform runs as ``llmaas serve`` in a subprocess with a Ray instance of its
own, started and torn down inside the test.

NOTE: every Ray node's dashboard agent listens on port 52365 (``ray.init`` cannot change it); a
node started while another holds that port keeps running without the agent's HTTP server, and
job submission on that cluster fails. So the test asks for ``ray_cluster`` first: the session's
cluster owns the port for the whole session, and the subprocess's cluster, which submits no jobs,
is the one without it (see test_ray_job.py, which must pass in the same session in any order).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmaas.cli import main

TLS_CATALOG = """
app_name: llmaas
cache_dir: {cache}
router: {{num_cpus: 0.1}}
tokenizer: {{num_cpus: 0.1}}
models:
  - id: tiny-llama
    source: {{demo: tiny-llama-chat}}
    max_context_length: 128
    sampling: {{temperature: 0.0, max_tokens: 8}}
    resources: {{num_cpus: 0.5, torch_threads: 1}}
"""
START_TIMEOUT_S = 300
STOP_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its private key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmaas test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C's path first (SIGTERM: serve.shutdown, then Ray's own shutdown), then SIGKILL the
    process group, which holds the subprocess's Ray processes too."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT_S)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            break  # the group is empty: no raylet, GCS or worker of that cluster is left
        time.sleep(0.5)
    else:
        pytest.fail(f"processes of the HTTPS platform's group {proc.pid} outlived SIGKILL")
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def https_url(
    ray_cluster: dict[str, str],  # NOTE: first, so the session's cluster owns the agent port
    tls_files: tuple[Path, Path],
    model_cache: Path,
    chat_model_path: Path,  # built once per session, so the subprocess builds nothing
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    cert, key = tls_files
    folder = tmp_path_factory.mktemp("tls-serve")
    catalog = folder / "catalog.yaml"
    catalog.write_text(TLS_CATALOG.format(cache=model_cache))
    log = folder / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "llmaas.cli", "serve", "--catalog", str(catalog)]
    command += ["--port", str(_free_port()), "--start-timeout", str(START_TIMEOUT_S)]
    command += ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S + 60
        url = None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
            found = re.search(r"llmaas: serving \S+ on (\S+) ", log.read_text(errors="replace"))
            url = found.group(1) if found else None
        if url is None:
            tail = log.read_text(errors="replace")[-5000:]
            pytest.fail(f"llmaas serve --ssl-* did not come up (exit {proc.poll()}):\n{tail}")
        yield url
    finally:
        _stop(proc)


def test_https_serves_models_and_chat_to_clients_that_trust_the_certificate(https_url, tls_files):
    cert, _ = tls_files
    assert https_url.startswith("https://127.0.0.1:")
    trusting = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(base_url=https_url, verify=trusting, timeout=120) as client:
        models = client.get("/v1/models")
        assert models.status_code == 200, models.text
        assert [m["id"] for m in models.json()["data"]] == ["tiny-llama"]
        reply = client.post(
            "/v1/chat/completions",
            json={"model": "tiny-llama", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8},
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"].startswith("Hello")


def test_https_port_refuses_plain_http_and_untrusting_clients(https_url):
    plain = https_url.replace("https://", "http://", 1)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain}/v1/models", timeout=30)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{https_url}/v1/models", timeout=30)  # the system's CAs do not know the test's


@pytest.fixture
def no_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail at once where ``llmaas serve`` would go on to prepare models or start anything."""
    import ray

    import llmaas.cli

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("went past the TLS check: it would have prepared models or started Ray")

    monkeypatch.setattr(llmaas.cli, "prepare", refuse)
    monkeypatch.setattr(ray, "init", refuse)


@pytest.mark.usefixtures("no_platform")
def test_missing_or_unusable_tls_files_exit_2_naming_the_file(tmp_path, tls_files, capsys):
    cert, key = tls_files
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(TLS_CATALOG.format(cache=tmp_path))
    missing = tmp_path / "nope.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    cases = [
        (["--ssl-certfile", str(missing), "--ssl-keyfile", str(key)], [str(missing)]),
        (["--ssl-certfile", str(cert), "--ssl-keyfile", str(missing)], [str(missing)]),
        (["--ssl-certfile", str(cert), "--ssl-keyfile", str(garbage)], [str(cert), str(garbage)]),
        (["--ssl-certfile", str(cert), "--ssl-keyfile", str(tmp_path)], [str(tmp_path)]),  # a folder
        (["--ssl-certfile", str(cert)], ["--ssl-keyfile"]),
    ]
    for flags, named in cases:
        assert main(["serve", "--catalog", str(catalog), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith("error: "), err
        for text in named:
            assert text in err, (flags, err)


@pytest.mark.usefixtures("no_platform")
def test_start_platform_rejects_unusable_tls_files_before_ray(tmp_path, tls_files):
    from llmaas.config.catalog import Catalog
    from llmaas.launch import start_platform

    cert, _ = tls_files
    catalog = Catalog.from_yaml(TLS_CATALOG.format(cache=tmp_path))
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "key.pem"))):
        start_platform(catalog, ssl_certfile=str(cert), ssl_keyfile=str(tmp_path / "key.pem"))
