"""Rate limits: the production defaults against the rule they are sized by, and the limits enforced by
real API processes sharing one Redis, refusing with 429 before any work, failing open without Redis."""

import itertools
import re
import statistics
import time

import httpx
import pytest
import redis
from dotenv import dotenv_values
from limits import parse
from pydantic import ValidationError

from src.config import BACKEND_DIR, Settings
from src.devserver.load import RATE_LIMIT_SETTINGS
from src.devserver.processes import ApiServer
from src.devserver.redis_server import PrivateRedis, free_port
from src.ratelimit import KEY_PREFIX, RULES
from tests.conftest import RUN_DIR

PASSWORD = "correct horse battery"  # conftest's make_user
LOWERED = {
    "RATE_LIMIT_LOGIN_PER_IP": "10/minute",
    "RATE_LIMIT_LOGIN_PER_ACCOUNT": "4/minute",
    "RATE_LIMIT_REGISTER_PER_IP": "2/minute",
    "RATE_LIMIT_INVITE_PER_ACCOUNT": "2/minute",
    "RATE_LIMIT_STATUS_CHANGE_PER_ACCOUNT": "3/minute",
}
NO_WAY_IN = re.compile(r"too many (login attempts|sign-ups|invitations|status changes); retry in \d+ s")


def default(setting: str):
    return parse(Settings.model_fields[setting].default)


def per_hour(setting: str) -> float:
    item = default(setting)
    return item.amount * 3600 / item.get_expiry()


# What a team of 20 needs from one office address within an hour, generously counted.
TEAM_OF_TWENTY = {
    "rate_limit_register_per_ip": 20 + 10,  # everyone signs up; ten retry (typo, address taken)
    "rate_limit_register_per_account": 2,
    "rate_limit_login_per_ip": 20 * 3,  # laptop, phone, one mistyped password each
    "rate_limit_login_per_account": 5,
    "rate_limit_verify_per_ip": 20 * 2,  # each clicks the link, and has it sent again once
    "rate_limit_verify_per_account": 2,
    "rate_limit_reset_per_ip": 20,  # each forgets their password once
    "rate_limit_reset_per_account": 2,
    "rate_limit_invite_per_ip": 20 * 19,  # each invites all the others
    "rate_limit_invite_per_account": 19,
    "rate_limit_invite_reply_per_ip": 20,
    "rate_limit_invite_reply_per_account": 2,
}


@pytest.mark.parametrize(("setting", "needed"), TEAM_OF_TWENTY.items())
def test_the_defaults_never_refuse_a_team_of_twenty_from_one_address_within_an_hour(setting, needed):
    """Worst case: all of it inside one window, however short the window is."""
    assert default(setting).amount >= needed


def test_the_defaults_stop_a_password_script_within_ten_tries_and_make_lockouts_costly():
    per_account = default("rate_limit_login_per_account")
    assert per_account.amount <= 10 and per_account.get_expiry() >= 15 * 60
    # Keeping one account locked takes a steady 40 attempts an hour; one address has 100.
    assert per_hour("rate_limit_login_per_ip") / per_hour("rate_limit_login_per_account") <= 2.5
    assert per_hour("rate_limit_status_change_per_account") >= 3600  # a change a second, never refused


def test_every_limit_is_a_setting_the_load_tools_raise():
    fields = {name for name in Settings.model_fields if name.startswith("rate_limit_")}
    in_rules = {s for rule in RULES.values() for s in (rule.per_ip, rule.per_account) if s}
    assert fields == in_rules == {name.lower() for name in RATE_LIMIT_SETTINGS}


def test_env_example_documents_every_limit_with_its_default():
    example = dotenv_values(BACKEND_DIR / ".env.example")
    assert {name: example.get(name) for name in RATE_LIMIT_SETTINGS} == {
        name: Settings.model_fields[name.lower()].default for name in RATE_LIMIT_SETTINGS
    }


@pytest.mark.parametrize("value", ["ten per minute", "10/fortnight", "10/minute;100/hour", ""])
def test_a_malformed_limit_is_a_start_up_error(value):
    with pytest.raises(ValidationError, match="rate_limit_login_per_ip"):
        Settings(rate_limit_login_per_ip=value, _env_file=None)


def test_an_api_process_with_a_malformed_limit_does_not_start():
    log = RUN_DIR / "api-bad-limit.log"
    server = ApiServer({"RATE_LIMIT_LOGIN_PER_IP": "often"}, log, free_port())
    with pytest.raises(RuntimeError, match="did not become ready"):
        server.start(timeout=15)
    assert "rate_limit_login_per_ip" in log.read_text()


@pytest.fixture(scope="module")
def limited_servers(database_url):
    """Two API processes on this run's Redis and the current database, with low limits."""
    env = {"DATABASE_URL": database_url, **LOWERED}
    servers = [ApiServer(env, RUN_DIR / f"api-limited-{n}.log", free_port()).start() for n in "ab"]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def fresh_counts(redis_url):
    """Every test starts with no request counted (the keys outlive the users they counted)."""
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{KEY_PREFIX}:*"):
        client.delete(key)


@pytest.fixture
def alternate(limited_servers, fresh_counts):
    """Each call goes to the other API process: every limit is counted across both."""
    turns = itertools.cycle(limited_servers)
    with httpx.Client(timeout=10) as http:

        def call(method: str, path: str, **kwargs) -> httpx.Response:
            return http.request(method, next(turns).url + path, **kwargs)

        yield call


def login(alternate, email: str, password: str) -> httpx.Response:
    return alternate("POST", "/api/auth/login", json={"email": email, "password": password})


def assert_refused(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert NO_WAY_IN.fullmatch(response.json()["detail"]), response.json()
    assert response.json()["detail"].endswith(f"retry in {retry_after} s")
    return retry_after


def test_login_is_limited_per_account_across_two_api_processes(alternate, make_user):
    alice, bob = make_user("alice"), make_user("bob")
    for _ in range(4):
        assert login(alternate, alice.email, "wrong password").status_code == 401
    assert_refused(login(alternate, "  ALICE@example.com ", PASSWORD))  # the right one, spelt another way
    assert_refused(login(alternate, alice.email, PASSWORD))
    assert login(alternate, bob.email, PASSWORD).status_code == 200  # only alice's account is locked


def test_login_is_limited_per_address_across_two_api_processes(alternate, make_user):
    carol = make_user("carol")
    for number in range(10):  # spraying: one guess at each of many accounts
        assert login(alternate, f"nobody{number}@example.com", "password1").status_code == 401
    assert_refused(login(alternate, carol.email, PASSWORD))


def test_register_is_limited_per_address_and_a_refused_one_creates_nobody(alternate):
    def register(name: str) -> httpx.Response:
        body = {"email": f"{name}@example.com", "password": "long enough password", "name": name}
        return alternate("POST", "/api/auth/register", json=body)

    assert [register(name).status_code for name in ("dan", "eve")] == [202, 202]
    assert_refused(register("fay"))
    assert login(alternate, "fay@example.com", "long enough password").status_code == 401


def test_invitations_are_limited_per_inviting_user(alternate, make_user, make_org):
    owner, *others = (make_user(name) for name in ("gus", "hal", "ida", "jo"))
    org_id = make_org(owner)

    def invite(user) -> httpx.Response:
        body = {"email": user.email, "role": "member"}
        return alternate("POST", f"/api/orgs/{org_id}/members", json=body, headers=owner.headers)

    assert [invite(user).status_code for user in others[:2]] == [202, 202]
    assert_refused(invite(others[2]))


def test_only_status_changes_count_and_a_refused_one_changes_nothing(alternate, client, make_user, make_org):
    owner = make_user("kim")
    org_id = make_org(owner)
    task = client.post(f"/api/orgs/{org_id}/tasks", json={"title": "Ship"}, headers=owner.headers).json()

    def patch(body: dict) -> httpx.Response:
        return alternate("PATCH", f"/api/tasks/{task['id']}", json=body, headers=owner.headers)

    for status in ("in_progress", "in_review", "done"):
        assert patch({"status": status}).status_code == 200
    assert_refused(patch({"status": "todo"}))
    assert patch({"status": "done", "title": "Shipped"}).status_code == 200  # no change of status
    events = client.get(f"/api/tasks/{task['id']}/events", headers=owner.headers).json()
    assert [e["kind"] for e in events].count("status_changed") == 3
    assert client.get(f"/api/tasks/{task['id']}", headers=owner.headers).json()["status"] == "done"


def test_without_redis_limits_fail_open_said_once_and_come_back(database_url, make_user):
    """Redis is never required for correctness: while it is down, requests go through at once."""
    lee, kim = make_user("lee"), make_user("kim")
    own_redis = PrivateRedis(workdir=str(RUN_DIR)).start()
    log = RUN_DIR / f"api-limits-no-redis-{database_url.split(':')[0]}.log"
    env = {"DATABASE_URL": database_url, "REDIS_URL": own_redis.url, **LOWERED}
    api = ApiServer(env, log, free_port()).start()

    def timed_login(body: dict[str, str]) -> tuple[int, float]:
        started = time.monotonic()
        return http.post("/api/auth/login", json=body).status_code, time.monotonic() - started

    try:
        with httpx.Client(base_url=api.url, timeout=10) as http:
            attempt = {"email": lee.email, "password": "wrong password"}
            assert http.post("/api/auth/login", json=attempt).status_code == 401
            # What a login costs here with Redis up (argon2 dominates: 0.2 s, or 0.6 s on a loaded
            # machine), from another account so lee's count is untouched.
            with_redis = [timed_login({**attempt, "email": kim.email}) for _ in range(3)]
            assert [code for code, _ in with_redis] == [401] * 3
            own_redis.stop()
            without = [timed_login(attempt) for _ in range(8)]
            without.append(timed_login({**attempt, "password": PASSWORD}))
            assert [code for code, _ in without] == [401] * 8 + [200]
            # Waiting on Redis would add its 0.5 s timeout (and redis-py's retries) to each request.
            added = statistics.median(s for _, s in without) - statistics.median(s for _, s in with_redis)
            assert added < 0.25, f"a down Redis must cost no waiting: +{added:.2f} s per login"
            time.sleep(2.5)  # past the breaker: the next request asks Redis again
            codes = [http.post("/api/auth/login", json=attempt).status_code for _ in range(8)]
            assert codes == [401] * 8  # the requests while down were not counted, and nobody waits

            own_redis.start()
            time.sleep(2.5)
            codes = [http.post("/api/auth/login", json=attempt).status_code for _ in range(5)]
            assert codes == [401] * 4 + [429]
    finally:
        api.stop()
        own_redis.stop()
    text = log.read_text()
    assert text.count("rate limits are not enforced until Redis answers again") == 1
    assert text.count("rate limits are enforced again") == 1
