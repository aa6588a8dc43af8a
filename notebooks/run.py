"""Execute notebooks end to end with nbclient; exit 1 on any cell error or timeout.

    .venv/bin/python notebooks/run.py notebooks/quickstart.ipynb --out build/notebooks

What `make notebook` (and so `make test`, CI) runs. The kernel is this interpreter's own
ipykernel, i.e. the virtualenv's Python, whatever kernelspecs the machine has installed
elsewhere. Each cell's output is echoed as it finishes; the executed copy (outputs included,
errors too) is written under --out, never over the committed notebook.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient


def _echo(cell: Any, cell_index: int, started: float) -> None:
    """Print a finished code cell's text output (CI logs show what ran)."""
    print(f"--- cell {cell_index} done at {time.perf_counter() - started:.1f}s", flush=True)
    texts: list[str] = []
    last_stream = None
    for output in cell.get("outputs", []):
        kind = output.get("output_type")
        if kind == "stream":
            if output.get("name") == last_stream:  # one print per token arrives as many outputs
                texts[-1] += output.get("text", "")
            else:
                texts.append(output.get("text", ""))
            last_stream = output.get("name")
            continue
        last_stream = None
        if kind in ("execute_result", "display_data"):
            data = output.get("data", {})
            texts.append("[image/png]" if "image/png" in data else data.get("text/plain", ""))
        elif kind == "error":
            texts.append(f"{output.get('ename')}: {output.get('evalue')}")
    for text in texts:
        print(text.rstrip("\n"), flush=True)


def run(path: Path, out_dir: Path, timeout: int) -> bool:
    nb = nbformat.read(path, as_version=4)
    # NOTE: no kernel directories: "python3" is then the native kernel, this interpreter, and a
    # user-wide python3 kernelspec pointing at another Python cannot win.
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    started = time.perf_counter()
    client = NotebookClient(
        nb,
        km=km,
        timeout=timeout,
        startup_timeout=120,
        coalesce_streams=True,
        resources={"metadata": {"path": str(path.parent.resolve())}},
        on_cell_executed=lambda cell, cell_index, **_: _echo(cell, cell_index, started),
    )
    print(f"executing {path} ({sys.executable}, {timeout}s per cell)", flush=True)
    ok = True
    try:
        client.execute()
    except Exception as exc:  # CellExecutionError, CellTimeoutError, DeadKernelError
        print(f"FAILED {path}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        ok = False
    finally:
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out_dir / path.name)
    print(
        f"{'executed' if ok else 'failed'} {path} in {time.perf_counter() - started:.0f}s; "
        f"executed copy: {out_dir / path.name}",
        flush=True,
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("build/notebooks"), help="where executed copies go")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    results = [run(path, args.out, args.timeout) for path in args.notebooks]
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
