"""Live updates: the authenticated consumer base class and sending to channel-layer groups after commit.

The database is the source of truth; channel-layer messages only tell browsers that something changed,
so a message lost while Redis restarts costs nothing: the browser reconnects and catches up from the DB.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.db import transaction
from redis.asyncio import BlockingConnectionPool

logger = logging.getLogger(__name__)

# Close code sent to a websocket without a signed-in session.
CLOSE_UNAUTHENTICATED = 4401


def session_group(session_key: str) -> str:
    """Return the channel-layer group of every socket a browser session opened (the key itself is not used:
    group names are visible to anyone who can read Redis)."""
    return "session-" + hashlib.sha256(session_key.encode()).hexdigest()[:40]


def session_sockets_close(session_key: str | None) -> None:
    """Close, after commit, every live socket the session ``session_key`` opened (on sign-out)."""
    if session_key:
        group_send_on_commit(session_group(session_key), "session.ended", {})


def group_send_now(group: str, message_type: str, payload: dict[str, Any]) -> bool:
    """Send ``payload`` to the channel-layer ``group`` as an event of ``message_type`` (``merge.progress``...).

    Returns whether it was handed to the layer; a layer that is down is logged, never raised.
    """
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        async_to_sync(layer.group_send)(group, {"type": message_type, "payload": payload})
    except Exception:  # the broker may be restarting; the browser catches up from the DB
        logger.warning("channel layer unavailable; %s to %s not sent", message_type, group, exc_info=True)
        return False
    return True


_claim_clients: dict[str, Any] = {}


def claim_period(name: str, seconds: float) -> bool:
    """Return True for the first caller, in any process, in each ``seconds`` (``name`` a period's key in the
    channel layer's Redis, ``settings.REDIS_URL``); False for the others, and when Redis cannot be reached."""
    import redis
    from django.conf import settings

    url = settings.REDIS_URL
    client = _claim_clients.get(url)
    if client is None:
        client = _claim_clients[url] = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        return bool(client.set(f"gemel:period:{name}", 1, nx=True, px=max(1, round(seconds * 1000))))
    except redis.RedisError:
        logger.warning("channel layer's Redis unavailable; period %s not claimed", name, exc_info=True)
        return False


def claim_period_reset(name: str) -> None:
    """Forget the current period of ``name``: the next ``claim_period`` succeeds (for tests and operators)."""
    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=5, socket_timeout=5).delete(
        f"gemel:period:{name}")


def group_send_on_commit(group: str, message_type: str, payload: dict[str, Any]) -> None:
    """Send ``payload`` to ``group`` once the current transaction commits (at once outside one)."""
    transaction.on_commit(lambda: group_send_now(group, message_type, payload))


class BlockingPoolRedisChannelLayer(RedisChannelLayer):
    """channels_redis's layer over a blocking connection pool.

    With redis-py's default pool (100 connections, then MaxConnectionsError), closing 200 sockets at once
    failed half of the ``group_discard`` calls and left those channels in their groups. Here a burst waits
    for one of ``max_connections`` connections (up to ``timeout`` seconds) instead of failing.
    """

    def create_pool(self, index: int) -> BlockingConnectionPool:
        host = dict(self.hosts[index])
        return BlockingConnectionPool.from_url(host.pop("address"), **host)


class AuthenticatedJsonConsumer(AsyncJsonWebsocketConsumer):
    """A JSON websocket consumer that closes at once for anonymous users; subclasses name their groups."""

    groups_to_join: list[str]

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        groups = await self.group_names()
        if groups is None:
            await self.close(code=4404)
            return
        session = self.scope.get("session")
        key = getattr(session, "session_key", None)
        self.groups_to_join = [*groups, session_group(key)] if key else groups
        for group in self.groups_to_join:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_to_join", None) or []:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def session_ended(self, event: dict[str, Any]) -> None:
        """The browser's session signed out: close its sockets as if it had never signed in."""
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        """Ignore what a browser sends: these sockets only push. (Decoding it as JSON would let any malformed
        frame end the connection with a server error, 1011.)"""

    async def group_names(self) -> list[str] | None:
        """Return the groups to join for this connection, or None to refuse it (unknown object)."""
        raise NotImplementedError
