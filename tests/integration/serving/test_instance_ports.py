"""One Ray Serve instance's ports are its own: nothing else on the machine can share them.

Found in CI: Ray binds the fallback proxy (where HAProxy sends requests while an
application has no replica up) to port 8500 on every instance, with SO_REUSEPORT. A
`freehold up` started beside this session's stack had its /health answered 200 and its
chat answered 404 by this stack's application, which the kernel handed its connections to.
"""

from __future__ import annotations

import errno
import os
import socket

import httpx
import pytest

from tests.integration.serving.conftest import Stack


def test_the_fallback_proxy_listens_on_a_port_nobody_else_can_share(stack: Stack) -> None:
    port = int(os.environ["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"])  # chosen by `local_ray`
    assert port != 8500  # Ray's default, the same on every instance
    # It is this stack's proxy: it knows this stack's applications.
    routes = httpx.get(f"http://127.0.0.1:{port}/-/routes", timeout=10)
    assert routes.status_code == 200 and "/tiny" in routes.json(), routes.text
    # Another Ray Serve proxy binds as Ray does, with SO_REUSEADDR and SO_REUSEPORT: the
    # kernel would have let it share the port and split the connections between the two.
    with socket.socket() as intruder:
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError) as refused:
            intruder.bind(("127.0.0.1", port))
        assert refused.value.errno == errno.EADDRINUSE
