"""The gloo group of data-parallel scoring, listening on the node's own address only (never all interfaces).

torch's `init_process_group("gloo", init_method="tcp://addr:port")` makes rank 0's TCPStore listen on every
interface and its gloo device on whatever the hostname resolves to, and the port had to be found by binding
and closing a socket first (another process could take it in between). Here rank 0 binds the node's address
with port 0 and hands the listening socket itself to the store (`master_listen_fd`), and every rank's gloo
device is created for its own node address (127.0.0.1 on the embedded cluster).
"""

from __future__ import annotations

import socket
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT = timedelta(seconds=120)


def serve_store(addr: str, world: int) -> dist.TCPStore:
    """Rank 0's store, listening on `addr` only, on a port the kernel picked for the socket it keeps (`.port`)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((addr, 0))
        sock.listen()
        port = sock.getsockname()[1]
    except OSError:
        sock.close()
        raise
    return dist.TCPStore(addr, port, world, True, TIMEOUT, wait_for_workers=False, master_listen_fd=sock.detach())


def join_store(addr: str, port: int, world: int) -> dist.TCPStore:
    """A client of rank 0's store (every other rank)."""
    return dist.TCPStore(addr, port, world, False, TIMEOUT)


def gloo_group(store: dist.Store, rank: int, world: int, own_addr: str) -> dist.ProcessGroupGloo:
    """This rank's gloo group, its device bound to `own_addr` (the node's address, not every interface)."""
    options = dist.ProcessGroupGloo._Options()
    options._devices = [dist.ProcessGroupGloo.create_device(hostname=own_addr)]
    options._timeout = TIMEOUT
    return dist.ProcessGroupGloo(store, rank, world, options)


def all_reduce(group: dist.ProcessGroupGloo, tensor: torch.Tensor) -> None:
    """Sum `tensor` over the group, in place."""
    group.allreduce([tensor]).wait()
