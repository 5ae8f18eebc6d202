"""Independent jobs (scoring chunks, Pareto evaluations) run in-process or on a Ray cluster."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

from onnxq.errors import OnnxqError

CONNECT_SECONDS = 5.0
"""How long a cluster address may take to accept a connection (Ray itself waits minutes)."""


def _check_reachable(address: str) -> None:
    """One error line, at once, when a ``host:port`` (or ``ray://host:port``) address does not
    accept a TCP connection."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port: Ray judges it
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise OnnxqError(f"cannot reach a Ray cluster at {address!r} ({exc.strerror or exc}); "
                         "start one with `ray start --head`, pass its address, or use --ray "
                         "local") from None


def connect(ray: str) -> Any:
    """The ``ray`` module, joined to the cluster ``ray`` names: an address, ``auto`` (the
    running cluster ``ray start`` made) or ``local`` (a Ray instance on this machine); a Ray
    session already open in this process is used as it is."""
    try:
        import ray as ray_module
    except ImportError:
        raise OnnxqError("--ray needs Ray: pip install 'onnxq[ray]' (or drop --ray to run "
                         "in this process)") from None
    if not ray_module.is_initialized():
        if ray not in ("auto", "local"):
            _check_reachable(ray)
        try:
            ray_module.init(address=None if ray == "local" else ray, log_to_driver=False,
                            include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            reason = " ".join(str(exc).split())[:160]
            raise OnnxqError(f"cannot reach a Ray cluster at {ray!r} ({reason}); start one "
                             "with `ray start --head`, pass its address, or use --ray local"
                             ) from None
    return ray_module


def run_jobs(fn: Callable[..., Any], shared: Any, items: Sequence[tuple], ray: str | None
             ) -> list[Any]:
    """``[fn(shared, *item) for item in items]``, in order: in this process when ``ray`` is
    None, else as tasks on that Ray cluster (``connect``; ``shared`` put in the object store
    once)."""
    if ray is None:
        return [fn(shared, *item) for item in items]
    ray_module = connect(ray)
    remote = ray_module.remote(fn)
    reference = ray_module.put(shared)
    return ray_module.get([remote.remote(reference, *item) for item in items])
