"""Ray Train's torch process group, kept on 127.0.0.1 when the Ray it runs on is local (issue 17).

`rtl.raystart.ensure_ray` puts a local Ray on loopback, but PyTorch's rendezvous store does not follow:
rank 0's `TCPStore` server binds the wildcard address (`::` / `0.0.0.0`) whatever `MASTER_ADDR` says
(torch/csrc/distributed/c10d/TCPStoreLibUvBackend.cpp, `makeWithPort`), so a local multi-worker
`rtl pretrain` would open a port to the network for the whole run. The only bind control torch offers is
`master_listen_fd`: a socket the caller has already bound. `LoopbackTorchConfig` is Ray's `TorchConfig`
whose backend first runs `_bind_rendezvous_to_loopback` on every worker: when the master address Ray
chose is loopback (a local Ray), rank 0 creates the store on a socket bound to that address (a
multi-tenant store, which torch's own rendezvous then reuses), and gloo's pair sockets use the loopback
interface. On a cluster (master = the node's VPC address) nothing changes.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import socket
import sys
from dataclasses import dataclass

from ray.train.torch.config import TorchConfig, _TorchBackend


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _bind_rendezvous_to_loopback() -> None:
    """In a Ray Train worker: make torch's rendezvous store listen on the master address when loopback."""
    from torch.distributed import TCPStore

    rdzv = importlib.import_module("torch.distributed.rendezvous")  # the module; the package attr is a function

    original = rdzv._create_c10d_store
    if getattr(original, "_rtl_loopback", False):
        return

    def create_store(hostname, port, rank, world_size, timeout, use_libuv=True):
        local = _is_loopback(hostname)
        if local and sys.platform.startswith("linux"):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # every rank: gloo's pair sockets on loopback
        agent_serves = getattr(rdzv, "_agent_store_serves", lambda h, p: False)
        if rank != 0 or not local or agent_serves(hostname, port):
            return original(hostname, port, rank, world_size, timeout, use_libuv)
        host = "127.0.0.1" if hostname == "localhost" else hostname
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
        return TCPStore(host_name=hostname, port=port, world_size=world_size, is_master=True, timeout=timeout,
                        multi_tenant=True, master_listen_fd=sock.detach(), use_libuv=use_libuv)

    create_store._rtl_loopback = True
    rdzv._create_c10d_store = create_store


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config) -> None:
        worker_group.execute(_bind_rendezvous_to_loopback)
        super().on_start(worker_group, backend_config)


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """`TorchConfig` (same fields) whose rendezvous store stays on loopback for a local Ray."""

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend
