"""Rate limits per client address and per account, kept in Redis so every API process counts together.

`limit(request, "login", account=email)` at the top of an endpoint (before any expensive or lasting
work) counts one request and raises `TooManyRequests` (429, `Retry-After`) when a limit is used up.
Each action's limits are settings (`RATE_LIMIT_<ACTION>_PER_IP`, `..._PER_ACCOUNT`), read at every
call. A refused request is not counted against the limit that refused it, so hammering a locked
account does not extend its lock.

Moving window (the `limits` package's Lua script: one round trip, atomic): a fixed window would let a
script try 10 passwords at the end of one window and 10 more at the start of the next. It keeps one
timestamp per counted request, at most the limit's amount per key, which the defaults keep small.

Redis is never required for correctness: when it cannot be reached the request goes through, the
outage is reported to `outages.broker` (whose breaker then skips Redis at once for a while, instead of
every request waiting for a refusal), and one warning says that limits are off until Redis answers.
"""

import ipaddress
import logging
import math
import threading
import time
from dataclasses import dataclass
from functools import cache

import limits
import redis
from fastapi import Request
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from src import outages
from src.config import settings
from src.errors import TooManyRequests
from src.redis_client import sync_redis

log = logging.getLogger("herald.ratelimit")

KEY_PREFIX = "herald:ratelimit"
# A limiter that cannot answer this soon is treated as down: a request never waits long for it.
TIMEOUTS = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}


@dataclass(frozen=True)
class Rule:
    what: str  # the 429 says "too many <what>"
    per_ip: str | None  # Settings field of the per-address limit
    per_account: str | None  # Settings field of the per-account limit


RULES = {
    "login": Rule("login attempts", "rate_limit_login_per_ip", "rate_limit_login_per_account"),
    "register": Rule("sign-ups", "rate_limit_register_per_ip", "rate_limit_register_per_account"),
    "verify": Rule("verification requests", "rate_limit_verify_per_ip", "rate_limit_verify_per_account"),
    "reset": Rule("password reset requests", "rate_limit_reset_per_ip", "rate_limit_reset_per_account"),
    "invite": Rule("invitations", "rate_limit_invite_per_ip", "rate_limit_invite_per_account"),
    "invite_reply": Rule(
        "invitation replies", "rate_limit_invite_reply_per_ip", "rate_limit_invite_reply_per_account"
    ),
    "status_change": Rule("status changes", None, "rate_limit_status_change_per_account"),
}


def limit(request: Request | None, action: str, account: str | int | None = None) -> None:
    """Count one `action` for the caller's address and for `account` (a normalized email or a user
    id); raise `TooManyRequests` if either limit is used up. `request` may be None for an action
    limited per account only."""
    rule = RULES[action]
    checks = []
    if rule.per_ip:
        assert request is not None, f"{action} is limited per address: pass the request"
        checks.append((rule.per_ip, "ip", client_address(request)))
    if rule.per_account:
        assert account is not None, f"{action} is limited per account: pass the account"
        checks.append((rule.per_account, "account", str(account)))
    if outages.broker.down:  # known down: do not wait for another refusal
        return
    try:
        retry_after = next(filter(None, (_hit(action, *check) for check in checks)), None)  # first refusal
    except redis.RedisError as exc:
        _redis_failed(exc)
        return
    _redis_answered()
    if retry_after is not None:
        raise TooManyRequests(f"too many {rule.what}; retry in {retry_after} s", retry_after)


def client_address(request: Request) -> str:
    """The address as uvicorn gives it (with --proxy-headers, the client's behind trusted proxies).
    IPv6 counts per /64, the block one subscriber gets, or one machine could rotate through 2^64."""
    host = request.client.host if request.client else "unknown"  # a unix socket without a proxy
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # "testclient" (the test client)
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:  # an IPv4 client on a dual-stack socket
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _hit(action: str, setting: str, scope: str, who: str) -> int | None:
    """None if the hit was counted, else the whole seconds until one fits. Checks stop at the first
    refusal: an address's count includes attempts that an account's limit then refused."""
    item = _parse(getattr(settings, setting))
    limiter = _limiter()
    if limiter.hit(item, action, scope, who):
        return None
    reset_at, _remaining = limiter.get_window_stats(item, action, scope, who)
    return max(1, math.ceil(reset_at - time.time()))


@cache
def _parse(value: str) -> limits.RateLimitItem:
    return limits.parse(value)  # validated at start-up (src.config)


@cache
def _limiter() -> MovingWindowRateLimiter:
    """Created on first use (connecting lazily), through `src.redis_client`: plain URL or Sentinel."""
    pool = sync_redis(**TIMEOUTS).connection_pool
    return MovingWindowRateLimiter(RedisStorage("redis://", connection_pool=pool, key_prefix=KEY_PREFIX))


_off_lock = threading.Lock()
_off = False  # limits are not enforced: Redis failed and has not answered since


def _redis_failed(exc: redis.RedisError) -> None:
    global _off
    outages.broker.failed(exc)
    with _off_lock:
        if _off:
            return
        _off = True
    log.warning("rate limits are not enforced until Redis answers again (%s)", type(exc).__name__)


def _redis_answered() -> None:
    global _off
    outages.broker.ok()
    if not _off:
        return
    with _off_lock:
        if not _off:
            return
        _off = False
    log.warning("rate limits are enforced again")
