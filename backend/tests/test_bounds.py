"""Bounded resources and closed doors, against real uvicorn processes: request bodies, connections,
headers, API docs in production, stream tokens in URLs, the Flower dashboard."""

import os
import secrets
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from src.db import SessionLocal
from src.devserver.processes import ApiServer, Flower
from src.devserver.redis_server import free_port
from src.orgs.models import Organization
from tests.conftest import RUN_DIR
from tests.live import WsClient

TWO_MIB = 2 * 1024 * 1024


@pytest.fixture
def api(api_servers, db):
    a, _b = api_servers
    with httpx.Client(base_url=a.url, timeout=10) as client:
        yield client


def org_count() -> int:
    with SessionLocal() as session:
        return session.scalar(select(func.count()).select_from(Organization)) or 0


def test_a_body_over_the_limit_answers_413_declared_or_chunked(api, make_user):
    alice = make_user("alice")
    body = b'{"name": "' + b"x" * TWO_MIB + b'"}'

    def chunks():
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    for auth in ({}, alice.headers):  # no authentication needed to be refused
        headers = {**auth, "Content-Type": "application/json"}
        declared = api.post("/api/orgs", content=body, headers=headers)
        chunked = api.post("/api/orgs", content=chunks(), headers=headers)
        assert "content-length" not in chunked.request.headers
        for response in (declared, chunked):
            assert response.status_code == 413, response.text
            assert response.json() == {"detail": "the request body is over 1048576 bytes"}
    assert org_count() == 0
    assert api.post("/api/orgs", json={"name": "Small"}, headers=alice.headers).status_code == 201


def test_a_declared_large_body_is_refused_before_it_is_sent(api_servers):
    a, _b = api_servers
    with socket.create_connection(("127.0.0.1", a.port), timeout=5) as conn:
        conn.sendall(
            b"POST /api/orgs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % TWO_MIB
        )
        answer = conn.recv(4096)  # not one byte of the body sent
    assert answer.startswith(b"HTTP/1.1 413 "), answer


@pytest.mark.parametrize("path", ["/", "/assets/index.html", "/assets/app.css", "/tasks/1"])
def test_the_web_app_is_never_served_without_its_policy(api, path):
    """The page is also a file among its assets: opened at /assets/index.html it must not run without
    its Content-Security-Policy, or in another site's frame."""
    page = api.get(path)
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "object-src 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"


def test_api_answers_say_nosniff_and_no_store_errors_included(api, make_user):
    alice = make_user("alice")
    for response in (
        api.get("/api/orgs", headers=alice.headers),
        api.get("/api/orgs"),  # 401
        api.get("/api/no-such-thing"),  # 404
        api.post("/api/orgs", json={}, headers=alice.headers),  # 422
    ):
        assert response.headers["x-content-type-options"] == "nosniff", response.status_code
        assert response.headers["cache-control"] == "no-store", response.status_code
    assert {r.status_code for r in (api.get("/api/orgs"), api.get("/api/no-such-thing"))} == {401, 404}


@pytest.mark.parametrize(("docs_in_production", "status"), [("false", 404), ("true", 200)])
def test_api_docs_are_off_in_production_unless_asked_for(database_url, docs_in_production, status):
    env = {
        "DATABASE_URL": database_url,
        "ENVIRONMENT": "Production",  # any case
        "SECRET_KEY": secrets.token_urlsafe(48),
        "SMTP_HOST": "127.0.0.1",  # production refuses the console backend
        "DOCS_IN_PRODUCTION": docs_in_production,
    }
    server = ApiServer(env, RUN_DIR / "api-production.log", free_port()).start()
    try:
        for path in ("/docs", "/redoc", "/openapi.json", "/static-offline-docs/swagger-ui.css"):
            assert httpx.get(f"{server.url}{path}", timeout=5).status_code == status, path
    finally:
        server.stop()


def test_a_stream_token_counts_only_under_its_exact_name_and_stays_out_of_logs(api_servers, api, make_user):
    _a, b = api_servers
    bob = make_user("bob")
    token = api.post("/api/notifications/stream-token", headers=bob.headers).json()["token"]
    for name in ("tok%65n", "TOKEN", "token%20"):
        refused = httpx.get(f"{b.url}/api/notifications/stream?{name}={token}", timeout=5)
        assert refused.status_code == 401, name
    with pytest.raises(Exception, match="401"):
        WsClient(f"ws://127.0.0.1:{b.port}/api/ws/notifications?tok%65n={token}")
    log = b.logfile.read_text()
    assert "/api/notifications/stream?tok%65n=[redacted]" in log
    assert "/api/ws/notifications?tok%65n=[redacted]" in log
    assert token not in log


def _reply(conn: socket.socket) -> bytes:
    """One whole response (headers and the Content-Length body) read from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += conn.recv(65536)
    return head


def test_uvicorn_caps_connections_and_headers_but_leaves_silent_sockets_to_the_proxy(database_url):
    """What one API process does on its own (UVICORN_LIMITS), and what it cannot do."""
    server = ApiServer(
        {"DATABASE_URL": database_url}, RUN_DIR / "api-caps.log", free_port(), "--limit-concurrency=4"
    ).start()
    try:
        silent = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(4)]
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 503  # not one more task
        for conn in silent:
            conn.close()
        deadline = time.monotonic() + 5
        while httpx.get(f"{server.url}/healthz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the closed sockets still count"
            time.sleep(0.1)

        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as huge:
            huge.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
            assert huge.recv(4096).startswith(b"HTTP/1.1 400 ")  # past 16 KB: refused and closed
            assert huge.recv(4096) == b""
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as trickled:
            trickled.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            for _ in range(17):  # a header line at a time, 1 KB each: past 16 KB with the 17th
                trickled.sendall(b"X-More: " + b"a" * 1_000 + b"\r\n")
                time.sleep(0.01)
            assert _reply(trickled).startswith(b"HTTP/1.1 400 ")
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as kept:
            for _ in range(3):  # 10 KB of headers each: the bound is per request, not per connection
                kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n")
                assert _reply(kept).startswith(b"HTTP/1.1 200 ")
            body = b"{" + b" " * 100_000 + b"}"  # a body, even in the headers' read, is not a header
            kept.sendall(
                b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            assert _reply(kept).startswith(b"HTTP/1.1 422 ")

        with socket.create_connection(("127.0.0.1", server.port), timeout=8) as trickling:
            trickling.sendall(b"GET /healthz HTTP/1.1\r\n")
            time.sleep(6)  # past --timeout-keep-alive=5
            trickling.sendall(b"Host: x\r\n\r\n")  # still open: uvicorn has no header timeout
            assert trickling.recv(4096).startswith(b"HTTP/1.1 200 ")
    finally:
        server.stop()


def test_flower_refuses_to_serve_other_hosts_without_a_login():
    script = Path(__file__).resolve().parents[1] / "start_celery_flower.sh"
    env = {**os.environ, "FLOWER_ADDRESS": "0.0.0.0", "FLOWER_BASIC_AUTH": ""}
    result = subprocess.run([script], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "refusing to serve Flower on 0.0.0.0 without a login" in result.stderr


@pytest.mark.parametrize(
    ("settings", "anonymous"),
    [
        ({}, 401),
        ({"FLOWER_UNAUTHENTICATED_API": "true"}, 200),
        ({"FLOWER_BASIC_AUTH": "admin:s3cret-Flower"}, 401),
    ],
)
def test_flowers_json_api_answers_without_a_login_only_when_asked_and_with_one_only_to_it(
    redis_url, settings, anonymous
):
    """Locally (127.0.0.1) the API opens without a login only on FLOWER_UNAUTHENTICATED_API=true, an
    opt-in since Flower then answers any web page; with FLOWER_BASIC_AUTH, only requests carrying it."""
    env = {"FLOWER_BASIC_AUTH": "", "FLOWER_UNAUTHENTICATED_API": "", **settings}
    flower = Flower(env, RUN_DIR / "flower.log", free_port()).start()
    try:
        workers = f"http://127.0.0.1:{flower.port}/api/workers"
        assert httpx.get(workers, timeout=10).status_code == anonymous
        if "FLOWER_BASIC_AUTH" in settings:
            user, password = settings["FLOWER_BASIC_AUTH"].split(":")
            assert httpx.get(workers, auth=(user, password), timeout=10).status_code == 200
    finally:
        flower.stop()
