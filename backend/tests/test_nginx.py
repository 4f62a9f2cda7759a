"""deploy/nginx/herald.conf with Debian's nginx in front of a real API process: the API, SSE and WebSocket
work through it, slow clients are cut, and rate limits count the real client's address."""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from src.devserver.processes import ApiServer
from src.devserver.redis_server import die_with_parent, free_port
from tests.conftest import IN_CI, RUN_DIR
from tests.live import SseClient, WsClient
from tests.test_notifications import move
from tests.test_notifications import team as team  # a fixture
from tests.test_ratelimit import LOWERED

CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "herald.conf"
pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # production's


class PrivateNginx:
    """nginx in the foreground with its own prefix, pid, logs and temporary paths, running the deployed
    server block on a free port in front of `api_port`."""

    def __init__(self, workdir: Path, api_port: int) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.error_log = RUN_DIR / "nginx-error.log"
        site = (
            CONF.read_text()
            .replace("listen 80;", f"listen 127.0.0.1:{self.port};")
            .replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{api_port};")
            .replace("/var/log/nginx/", f"{RUN_DIR}/nginx-")
        )
        (workdir / "herald.conf").write_text(site)
        temp_paths = "".join(f"{kind}_temp_path {workdir}/{kind};\n" for kind in
                             ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))  # fmt: skip
        (workdir / "nginx.conf").write_text(
            ("user root;\n" if os.geteuid() == 0 else "")
            + f"daemon off;\nworker_processes 1;\npid {workdir}/nginx.pid;\n"
            f"error_log {self.error_log} info;\n"
            "events { worker_connections 256; }\n"
            f"http {{\n{temp_paths}include {workdir}/herald.conf;\n}}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "PrivateNginx":
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(binary):
            if IN_CI:
                pytest.fail("CI=true and no nginx (apt-get install nginx)")
            pytest.skip("no nginx (apt-get install nginx)")
        command = [
            binary,
            "-p",
            str(self.workdir),
            "-c",
            str(self.workdir / "nginx.conf"),
            "-e",
            str(self.error_log),
        ]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.process = subprocess.Popen(command, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                assert time.monotonic() < deadline and self.process.poll() is None, "nginx did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@pytest.fixture(scope="module")
def proxied(database_url, tmp_path_factory):
    """An API process with the rate limits lowered, and nginx in front of it."""
    api = ApiServer({"DATABASE_URL": database_url, **LOWERED}, RUN_DIR / "api-nginx.log", free_port()).start()
    nginx = PrivateNginx(tmp_path_factory.mktemp("nginx"), api.port).start()
    yield nginx
    nginx.stop()
    api.stop()


@pytest.fixture
def http(proxied, db):
    with httpx.Client(base_url=proxied.url, timeout=10) as client:
        yield client


def test_every_path_of_the_api_and_its_pages_goes_through(http):
    assert http.get("/healthz").status_code == 200
    assert http.get("/openapi.json").json()["info"]["title"]
    for path in ("/docs", "/redoc", "/tasks/1"):
        page = http.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
    assert http.get("/api/notifications").status_code == 401  # the API's own answer, not nginx's
    root = http.get("/")  # the web app's place: whatever the API answers there, not an nginx page
    assert root.status_code in (200, 404) and "nginx" not in root.text


def test_a_body_over_the_limit_is_refused_by_nginx(http):
    response = http.post("/api/auth/register", content=b"x" * (1024 * 1024 + 1))
    assert response.status_code == 413 and "nginx" in response.text


@pytest.mark.parametrize("kind", ["sse", "websocket"])
def test_live_events_arrive_unbuffered_through_nginx_within_a_second(proxied, http, team, kind):
    _org, task, alice, bob, _carol = team
    token = http.post("/api/notifications/stream-token", headers=bob.headers).json()["token"]
    if kind == "sse":
        stream = SseClient(f"{proxied.url}/api/notifications/stream?token={token}")
    else:
        stream = WsClient(f"ws://127.0.0.1:{proxied.port}/api/ws/notifications?token={token}")
    assert stream.next("unread_count")["data"] == {"count": 0}
    changed_at = move(http, task, alice, "in_progress")
    event = stream.next(timeout=1.0)
    assert time.monotonic() - changed_at < 1.0
    assert event["data"]["data"]["new_status"] == "in_progress"
    stream.close()
    assert token not in (RUN_DIR / "nginx-herald.access.log").read_text()  # logged without its query


def test_an_unsubscribe_links_token_stays_out_of_both_access_logs(proxied, http):
    """The token is in the link's path, valid for a year, and changes its owner's email preferences."""
    token = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJlLW9mLXRoZS1saW5r"
    assert http.get(f"/unsubscribe/{token}").status_code == 403  # a forged one: the page says so
    assert http.post(f"/unsubscribe/{token}").status_code == 403
    time.sleep(0.5)  # uvicorn's and nginx's lines are written once the answer is sent
    for log in (RUN_DIR / "nginx-herald.access.log", RUN_DIR / "api-nginx.log"):
        text = log.read_text()
        assert "/unsubscribe/[redacted]" in text and token not in text, log.name


def test_a_client_trickling_its_headers_is_cut_by_nginx(proxied):
    """One header byte a second, as slowloris does: nginx closes it after client_header_timeout (10 s)
    from the start of the request, however steadily the bytes come."""
    with socket.create_connection(("127.0.0.1", proxied.port), timeout=2) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: herald\r\n")
        closed_after = None
        for _ in range(20):
            try:
                sock.sendall(b"X")
                sock.settimeout(1.0)
                if sock.recv(1024) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except OSError:  # reset
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None, "nginx kept a trickling client for 20 s"
    assert 9 <= closed_after <= 13, closed_after
    assert "client timed out" in (RUN_DIR / "nginx-error.log").read_text()


def client_from(proxied, address: str) -> httpx.Client:
    """A client connecting to nginx from `address` (any 127.x.y.z is this machine)."""
    return httpx.Client(
        base_url=proxied.url, timeout=10, transport=httpx.HTTPTransport(local_address=address)
    )


def test_rate_limits_count_the_real_client_address_not_the_proxy(proxied, db, redis_url):
    """RATE_LIMIT_REGISTER_PER_IP is 2/minute here. Through nginx every request reaches the API from
    127.0.0.1; the limit still counts each client, and a forged X-Forwarded-For changes nothing."""
    import redis

    from src.ratelimit import KEY_PREFIX

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{KEY_PREFIX}:*"):
        client.delete(key)

    def register(http: httpx.Client, name: str, **headers: str) -> int:
        body = {
            "email": f"{name}{time.monotonic_ns()}@example.com",
            "password": "correct horse battery",
            "name": name,
        }
        return http.post("/api/auth/register", json=body, headers=headers).status_code

    with client_from(proxied, "127.0.0.2") as first, client_from(proxied, "127.0.0.3") as second:
        assert [register(first, "ann") for _ in range(2)] == [202, 202]
        assert register(first, "ann") == 429
        assert register(first, "ann", **{"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"}) == 429
        assert register(second, "ben") == 202  # another client, through the same proxy
    addresses = {key.decode().split("/")[3] for key in client.scan_iter(f"{KEY_PREFIX}:*") if b"/ip/" in key}
    assert addresses == {"127.0.0.2", "127.0.0.3"}, addresses  # never the proxy's 127.0.0.1
