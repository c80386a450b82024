"""The one place rtl starts or joins Ray: a local run listens on 127.0.0.1 only (issue 17).

Every verb that needs Ray (`corpus build`, `pretrain`, `sweep run|resume`, `demo`) calls `ensure_ray`.

* An address (`--address` or `RAY_ADDRESS`), or a cluster started with `ray start` on this machine (what a
  plain `ray.init()` joins, e.g. a shell on a cluster node): join it exactly as `ray.init` does; the
  cluster's own configuration decides where it listens.
* No address: start a private local Ray whose GCS, raylet, object manager, workers and agents bind
  127.0.0.1, with the dashboard off. Ray's Linux default binds them to the machine's network address
  (its `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` flag defaults to on there, and then even an explicit
  `_node_ip_address="127.0.0.1"` is rewritten to the interface address by
  `ray._private.services.resolve_ip_for_localhost`): anyone on the network who reaches those ports can
  run code on the machine. So the flag is forced off here (in `os.environ`, read by Ray at import and by
  every process the local Ray spawns) and the node IP is pinned to 127.0.0.1, whatever the caller's
  environment says.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
from collections.abc import Iterator
from typing import Any

from rtl.errors import RtlRuntimeError

LOOPBACK = "127.0.0.1"
_CLUSTER_FLAG = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ray_address(address: str | None = None) -> str | None:
    """The cluster to join: `address`, else `RAY_ADDRESS`; None (also for Ray's "local") = a local Ray."""
    addr = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    return None if addr in ("", "local") else addr


def _force_loopback() -> None:
    """Make Ray treat this machine as a single loopback node, in this process and the ones it spawns."""
    os.environ[_CLUSTER_FLAG] = "0"  # read at import by every process the local Ray starts
    consts = sys.modules.get("ray._private.ray_constants")
    if consts is not None:  # this process imported ray already: its copy of the flag is read
        consts.ENABLE_RAY_CLUSTER = False


def _started_cluster() -> str | None:
    """Address of a cluster started with `ray start` on this machine (Ray's bootstrap file), or None."""
    try:
        from ray._private.utils import read_ray_address

        return read_ray_address(None) or None
    except (ImportError, OSError):
        return None


@contextlib.contextmanager
def _any_free_agent_port() -> Iterator[None]:
    """During a local `ray.init`: let the dashboard agent's HTTP server take any free port (issue 13).

    Ray 2.60 binds every port of a local start to a free one except this server's, fixed at 52365 (a
    `RayParams` default `ray.init` does not expose). With another Ray on the machine (another user's, a
    test session, a sweep) the port is taken, and the agent retries for ~3.3 s before giving up on the
    server, while the raylet waits for it to register: every `ray.init` paid those seconds here and got
    an agent without its HTTP server (job submission). Port 0 is Ray's own "dynamic port" value for it
    (the agent reports the port it bound; `dashboard/agent.py`). Only the default is changed, only for
    the duration of the call; a Ray without that parameter is left alone.
    """
    try:
        from ray._private.parameter import RayParams

        orig = RayParams.__init__
        known = "dashboard_agent_listen_port" in inspect.signature(orig).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        known = False
    if not known:
        yield
        return

    @functools.wraps(orig)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("dashboard_agent_listen_port", 0)
        orig(self, *args, **kwargs)

    RayParams.__init__ = init
    try:
        yield
    finally:
        RayParams.__init__ = orig


def ensure_ray(address: str | None = None, **local_options: Any) -> bool:
    """Join a cluster, or start a loopback-only local Ray; True when this call did either.

    Cluster: `address`, else `RAY_ADDRESS`, else one started by `ray start` on this machine. Returns False
    (and does nothing) when Ray is already initialised in this process. `local_options` (e.g. `num_cpus`,
    `_system_config`) apply to a local start only; a cluster decides its own. Raises `RtlRuntimeError`
    (one line) when Ray cannot start or the cluster cannot be reached.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return False
    addr = ray_address(address) or _started_cluster()
    if addr is None:
        _force_loopback()
    common = {"log_to_driver": False, "configure_logging": False}
    try:
        if addr is not None:
            ray.init(address=addr, **common)
        else:  # "local": never pick up some other cluster behind our back
            opts = {"include_dashboard": False, "dashboard_host": LOOPBACK, **local_options}
            with _any_free_agent_port():
                ray.init(address="local", _node_ip_address=LOOPBACK, **common, **opts)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RtlRuntimeError(f"cannot {'connect to Ray at ' + addr if addr else 'start a local Ray'}: "
                              f"{first}") from None
    return True
