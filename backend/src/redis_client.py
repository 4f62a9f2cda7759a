"""Redis connections for Herald's own use (notification fan-out, rate limits), plain or through Sentinel.

With REDIS_SENTINEL_MASTER set, REDIS_URL lists the sentinels the way Celery does,
`sentinel://host1:26379;sentinel://host2:26379/0`, and every client asks them for the current
master, so a failover needs no restart.
"""

from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from src.config import settings

TIMEOUTS = {"socket_timeout": 5, "socket_connect_timeout": 2}


def sentinel_hosts(url: str) -> tuple[list[tuple[str, int]], int, str | None]:
    """(sentinel addresses, database number, password) from a `sentinel://...;sentinel://...` URL."""
    hosts, db, password = [], 0, None
    for part in url.split(";"):
        parsed = urlsplit(part.strip())
        if parsed.scheme != "sentinel" or not parsed.hostname:
            raise ValueError(f"REDIS_URL must list sentinels as sentinel://host:port;... when "
                             f"REDIS_SENTINEL_MASTER is set, not {part!r}")  # fmt: skip
        hosts.append((parsed.hostname, parsed.port or 26379))
        db = int(parsed.path.strip("/") or db)
        password = parsed.password or password
    return hosts, db, password


def _client(redis_class: Any, sentinel_class: Any, options: dict[str, object]) -> Any:
    options = {**TIMEOUTS, **options}  # a caller may want to give up sooner
    if not settings.redis_sentinel_master:
        return redis_class.from_url(settings.redis_url, **options)
    hosts, db, password = sentinel_hosts(settings.redis_url)
    sentinel = sentinel_class(hosts, sentinel_kwargs=TIMEOUTS)
    return sentinel.master_for(settings.redis_sentinel_master, db=db, password=password, **options)


def sync_redis(**options: object) -> redis.Redis:
    return _client(redis.Redis, Sentinel, options)


def async_redis(**options: object) -> aioredis.Redis:
    return _client(aioredis.Redis, AsyncSentinel, options)


def celery_transport_options() -> dict[str, object]:
    """What Celery's broker and result backend need on top of REDIS_URL."""
    return {"master_name": settings.redis_sentinel_master} if settings.redis_sentinel_master else {}
