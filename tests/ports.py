"""A free TCP port for a server a test starts later.

Not the kernel's pick (port 0): that comes from the ephemeral range (32768-60999 here),
where every process Ray starts between our pick and the server's bind (GCS, raylet,
agents) takes its own ports, and one did take ours once (HAProxy: "Address already in
use", the whole serving suite lost in CI). Ray's worker ports are 10002-19999 and Serve's
direct-ingress ports 30000-31000 and 40000-41000, so 20000-29999 is left to the tests.
"""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20000, 30000


def free_port(host: str = "127.0.0.1") -> int:
    for port in random.sample(range(LOW, HIGH), 200):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {LOW}-{HIGH - 1} on {host}")
