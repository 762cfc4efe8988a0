"""Slow clients against a server run as `memoir serve` runs it (tiny model): clients that never
finish their headers, or send their body a byte at a time, are cut at the deadlines, one
address cannot hold more than its share of connections, and normal requests meanwhile keep
their latency."""

from __future__ import annotations

import socket
import statistics
import threading
import time

import httpx
import pytest

from tests.support.server_utils import THREADS, Server, free_port

pytestmark = pytest.mark.timeout(180)

HEADER_S, BODY_S, CAP = 1.5, 3.0, 40


@pytest.fixture(scope="module")
def server():
    port = free_port()
    s = Server(["-m", "tests.support.tiny_serve"], {"MEMOIR_PORT": str(port), "MEMOIR_THREADS": THREADS,
                                            "MEMOIR_HEADER_TIMEOUT": str(HEADER_S), "MEMOIR_BODY_TIMEOUT": str(BODY_S),
                                            "MEMOIR_MAX_CONNECTIONS_PER_IP": str(CAP), "MEMOIR_LOG_FORMAT": "text"},
               port=port).start(120)
    yield s
    s.stop()


def _latency(client: httpx.Client, n: int = 8) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.post("/generate", json={"prompt": "who is the chief", "max_new_tokens": 4})
        assert r.status_code == 200, r.text
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _closed_after(sock: socket.socket, limit: float) -> tuple[float | None, bytes]:
    """Seconds until the server closed the connection (None: still open at limit), and what it sent."""
    sock.settimeout(0.2)
    got, t0 = b"", time.monotonic()
    while time.monotonic() - t0 < limit:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - t0, got
        if not data:
            return time.monotonic() - t0, got
        got += data
    return None, got


def test_slow_clients_are_cut_at_the_deadlines_and_others_keep_their_latency(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        baseline = _latency(client)
        stop = threading.Event()
        results: dict[str, list] = {"headers": [], "body": []}

        def slow_headers():
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            results["headers"].append(_closed_after(s, HEADER_S + 10))
            s.close()

        def slow_body():
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{")
            t0 = time.monotonic()
            try:
                while not stop.is_set() and time.monotonic() - t0 < BODY_S + 10:
                    s.sendall(b" ")  # one byte every half second: never done in time
                    time.sleep(0.5)
            except OSError:
                pass  # the server closed it
            results["body"].append((time.monotonic() - t0, b""))
            s.close()

        threads = [threading.Thread(target=f) for f in [slow_headers] * 15 + [slow_body] * 15]
        for t in threads:
            t.start()
        time.sleep(0.5)
        during = _latency(client)
        for t in threads:
            t.join()
        stop.set()
    for seconds, sent in results["headers"]:
        assert seconds is not None and HEADER_S - 0.2 < seconds < HEADER_S + 5, results["headers"]
        assert sent.startswith(b"HTTP/1.1 408"), sent
    for seconds, _ in results["body"]:
        assert seconds < BODY_S + 5, results["body"]
    assert during < max(3 * baseline, baseline + 0.5), (baseline, during)
    out = server.output(200_000)
    assert out.count("did not arrive within the") <= 4 and "Traceback" not in out, out[-3000:]  # once per interval


def test_one_address_holds_at_most_its_share_of_connections(server):
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(CAP + 5)]
    try:
        refused = 0
        for s in socks[CAP:]:
            seconds, sent = _closed_after(s, 2)
            refused += seconds is not None and sent.startswith(b"HTTP/1.1 503")
        assert refused == 5
    finally:
        for s in socks:
            s.close()
    time.sleep(0.3)
    assert httpx.get(server.url + "/ready", timeout=10).status_code == 200  # freed: taken again
