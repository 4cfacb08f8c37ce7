"""A Ray cluster to run on: the one at ``--ray-address``, or a local one sized to this machine.

Ray is an optional extra (``geoloc[ray]``): it is imported here only, inside the functions, so
that neither ``geoloc --help`` nor a local run ever pays for it. Every way of not getting a
cluster (the extra missing, nothing listening at the address, a refused connection) ends as one
:class:`GeolocError` line that says what to do.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from typing import Iterator, Optional

from geoloc.errors import GeolocError, UsageError

INSTALL_HINT = 'install the extra with: python -m pip install "geoloc[ray]"'
#: Seconds to wait for a TCP answer from ``--ray-address`` before saying it cannot be reached
#: (Ray itself retries for minutes before giving up on an address where nothing listens).
CONNECT_TIMEOUT_S = 5.0
#: The port of a ``ray://`` (Ray Client) address without one, and of a bare host's GCS.
CLIENT_PORT = 10001
GCS_PORT = 6379


@dataclass
class RayConfig:
    #: ``host:port`` of a running cluster's head (``ray start --head``), ``ray://host:port``
    #: (Ray Client), ``auto`` (the cluster this node belongs to); None: start a local Ray.
    address: Optional[str] = None
    #: Actors, each holding one model; None: one per GPU when the cluster has GPUs, else one
    #: per ``cpus_per_worker`` CPUs of the cluster.
    workers: Optional[int] = None
    #: CPUs each actor asks for (its network's threads, and its decoding thread).
    cpus_per_worker: float = 1.0
    #: A local Ray's CPUs; None: this machine's cores.
    local_cpus: Optional[int] = None


def import_ray():
    """The ``ray`` module with Ray Data, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # the extra is ray[data]: pyarrow and pandas too
    except ImportError as exc:
        raise GeolocError(f"--engine ray needs Ray, which is not installed ({exc}); {INSTALL_HINT}") from None
    return ray


def check_reachable(address: str) -> None:
    """Fail in seconds, not minutes, when nothing answers at ``address`` (one line)."""
    if address == "auto":
        return
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep:
        host, port = target, str(CLIENT_PORT if address.startswith("ray://") else GCS_PORT)
    try:
        number = int(port)
    except ValueError:
        raise UsageError(f"--ray-address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379)") from None
    try:
        with socket.create_connection((host.strip("[]"), number), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise GeolocError(f"cannot connect to the Ray cluster at {address}: {reason}; is `ray start "
                          "--head` running there, and is the port open from this machine?") from None


@contextlib.contextmanager
def ray_session(config: Optional[RayConfig] = None) -> Iterator[object]:
    """Ray, connected: to ``config.address``, to a Ray this process already started (the tests'
    shared local cluster), or to a new local one that is shut down again afterwards."""
    config = config or RayConfig()
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if config.address:
        check_reachable(config.address)
        kwargs: dict = {"address": config.address}
    else:
        kwargs = {"num_cpus": config.local_cpus or os.cpu_count() or 1, "include_dashboard": False,
                  "runtime_env": {"env_vars": {"PYTHONPATH": _python_path()}}}
    try:
        ray.init(log_to_driver=False, configure_logging=False, **kwargs)
    except Exception as exc:  # ConnectionError, RuntimeError, a version mismatch, …
        where = f"the Ray cluster at {config.address}" if config.address else "a local Ray"
        raise GeolocError(f"cannot start or reach {where}: {_one_line(exc)}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _python_path() -> str:
    """Local Ray workers import this very geoloc (a checkout run with ``python -m geoloc`` too)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rest = os.environ.get("PYTHONPATH")
    return here + (os.pathsep + rest if rest else "")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."
