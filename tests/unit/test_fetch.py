"""Which registries a model may be fetched from over plain HTTP."""

from freehold_serving.fetch import _plain_http_allowed


def test_listed_registries_by_host_or_host_and_port() -> None:
    # HOST:PORT is how the chart's insecureRegistries and container runtimes list them;
    # the real-pods suite found it was compared with the host alone.
    assert _plain_http_allowed("192.0.2.2", 5000, ["192.0.2.2:5000"])
    assert not _plain_http_allowed("192.0.2.2", 5001, ["192.0.2.2:5000"])
    assert _plain_http_allowed("mirror.local", 8080, ["mirror.local"])
    assert not _plain_http_allowed("registry.example", 80, ["mirror.local"])
    assert _plain_http_allowed("127.0.0.1", 5000, [])
    assert _plain_http_allowed("localhost", 5000, [])
