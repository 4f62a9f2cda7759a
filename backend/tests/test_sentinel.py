"""Redis Sentinel: Herald finds the master through the sentinels and follows a failover."""

import subprocess
import time

import httpx
import pytest
import redis

from src.devserver.processes import ApiServer, CeleryBeat, CeleryWorker
from src.devserver.redis_server import PrivateRedis, free_port, redis_server_binary
from tests.conftest import RUN_DIR, require_service
from tests.live import SseClient
from tests.test_emails import wait_until


@pytest.fixture
def sentinel_setup(tmp_path):
    require_service("redis")
    master = PrivateRedis(workdir=str(tmp_path)).start()
    replica = PrivateRedis(
        workdir=str(tmp_path), extra_args=("--replicaof", "127.0.0.1", str(master.port))
    ).start()
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor herald 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds herald 1000\nsentinel failover-timeout herald 10000\n"
    )
    log = (tmp_path / "sentinel.log").open("wb")
    sentinel = subprocess.Popen([redis_server_binary(), str(config), "--sentinel"], stdout=log, stderr=log)
    client = redis.Redis(port=port, socket_timeout=2)
    deadline = time.monotonic() + 20
    while not _sees_replica(client):
        assert time.monotonic() < deadline, "the sentinel never saw the replica"
        time.sleep(0.2)
    yield {"master": master, "replica": replica, "sentinel": client, "url": f"sentinel://127.0.0.1:{port}/0"}
    sentinel.terminate()
    sentinel.wait()
    log.close()
    master.stop()
    replica.stop()


def _sees_replica(sentinel: redis.Redis) -> bool:
    try:
        return sentinel.sentinel_master("herald")["num-slaves"] >= 1
    except redis.RedisError:
        return False


def test_emails_and_notifications_flow_through_sentinel_and_survive_a_failover(
    sentinel_setup, database_url, db, smtp_sink, sink, client, make_user, make_org
):
    alice, bob = make_user("alice"), make_user("bob")
    org_id = make_org(alice, bob)
    task = client.post(
        f"/api/orgs/{org_id}/tasks", json={"title": "HA", "watcher_ids": [bob.id]}, headers=alice.headers
    )
    env = {
        "DATABASE_URL": database_url, "REDIS_URL": sentinel_setup["url"], "REDIS_SENTINEL_MASTER": "herald",
        "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp_sink.port), "SMTP_USE_TLS": "false",
    }  # fmt: skip
    api = ApiServer(env, RUN_DIR / "api-sentinel.log", free_port()).start()
    worker = CeleryWorker(env, RUN_DIR / "worker-sentinel.log").start()
    # As in production: a wake-up published while the sentinel is still failing over can be lost,
    # and the queue processor (every EMAIL_QUEUE_INTERVAL, 1 s here) sends that email anyway.
    beat = CeleryBeat(env, RUN_DIR / "beat-sentinel.log", RUN_DIR / "beat-sentinel-schedule").start()
    try:
        http = httpx.Client(base_url=api.url, timeout=10)
        token = http.post("/api/notifications/stream-token", headers=bob.headers).json()["token"]
        stream = SseClient(f"{api.url}/api/notifications/stream?token={token}")

        def change(status: str) -> None:
            response = http.patch(
                f"/api/tasks/{task.json()['id']}", json={"status": status}, headers=alice.headers
            )
            assert response.status_code == 200

        def status_emails() -> list[str]:  # not the one inviting Bob
            return [m.message["Subject"] for m in sink.messages if "HA" in m.message["Subject"]]

        change("in_progress")
        assert stream.next(timeout=5)["data"]["data"]["new_status"] == "in_progress"
        wait_until(lambda: len(status_emails()) == 1, 15, message="the first status email")

        sentinel_setup["master"].stop()  # the master dies; the sentinel promotes the replica
        replica_port = sentinel_setup["replica"].port
        deadline = time.monotonic() + 30
        while sentinel_setup["sentinel"].sentinel_get_master_addr_by_name("herald")[1] != replica_port:
            assert time.monotonic() < deadline, "the sentinel did not fail over"
            time.sleep(0.2)

        change("done")
        assert stream.next(timeout=20)["data"]["data"]["new_status"] == "done"
        wait_until(lambda: len(status_emails()) == 2, 30, message="the second status email")
        time.sleep(0.5)
        assert len(status_emails()) == 2
        stream.close()
    finally:
        beat.stop()
        worker.stop()
        api.stop()


def test_rate_limits_count_in_the_master_the_sentinels_name(sentinel_setup, database_url, make_user):
    alice = make_user("alice")
    env = {
        "DATABASE_URL": database_url, "REDIS_URL": sentinel_setup["url"], "REDIS_SENTINEL_MASTER": "herald",
        "RATE_LIMIT_LOGIN_PER_ACCOUNT": "2/minute",
    }  # fmt: skip
    api = ApiServer(env, RUN_DIR / "api-sentinel-limits.log", free_port()).start()
    try:
        attempt = {"email": alice.email, "password": "wrong password"}
        codes = [httpx.post(f"{api.url}/api/auth/login", json=attempt).status_code for _ in range(3)]
    finally:
        api.stop()
    assert codes == [401, 401, 429]
    master = redis.Redis.from_url(sentinel_setup["master"].url)
    assert any(key.startswith(b"herald:ratelimit:") for key in master.scan_iter())
