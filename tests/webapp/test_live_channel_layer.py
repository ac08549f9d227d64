"""The channel layer as configured (real Redis): a consumer's receive ends when it is cancelled, at any moment.

A websocket consumer waits on its channel with channels_redis's ``receive``, a loop of blocking pops. When the
consumer goes away that wait is cancelled; if the cancellation were lost, the loop would poll Redis forever:
a leaked task in daphne, and an event loop that never closes in the tests.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from channels.layers import get_channel_layer

from webapp.live import BlockingPoolRedisChannelLayer

# Generous: a lost cancellation never ends, a kept one ends at the next await.
DEADLINE_S = 30


@dataclass
class BlockingPopWatch:
    """Sees each BZPOPMIN command handed to a socket; can cancel a task at exactly that moment."""

    sent: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_on_send: asyncio.Task | None = None


@pytest.fixture
def blocking_pops(monkeypatch) -> BlockingPopWatch:
    """Watch the blocking pops written to Redis sockets.

    The moment a pop is written is the one at which a cancellation can be lost: Python 3.11's asyncio.wait_for,
    which redis-py sends through when a socket timeout is set, returns the send's result instead of raising
    when the send finishes as the cancellation arrives.
    """
    watch = BlockingPopWatch()
    original = asyncio.StreamWriter.writelines

    def writelines(self: asyncio.StreamWriter, data) -> None:
        chunks = list(data)
        original(self, chunks)
        if any(b"BZPOPMIN" in bytes(chunk) for chunk in chunks):
            watch.sent.set()
            if watch.cancel_on_send is not None:
                watch.cancel_on_send.cancel()
                watch.cancel_on_send = None

    monkeypatch.setattr(asyncio.StreamWriter, "writelines", writelines)
    return watch


@pytest.mark.asyncio
async def test_a_receive_cancelled_as_its_blocking_pop_is_sent_ends(blocking_pops):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    receiving = asyncio.ensure_future(layer.receive(channel))
    blocking_pops.cancel_on_send = receiving

    done, _ = await asyncio.wait([receiving], timeout=DEADLINE_S)

    assert blocking_pops.sent.is_set(), "no blocking pop was sent"
    assert done, "the cancelled receive is still polling Redis: the cancellation was lost"
    assert receiving.cancelled()


@pytest.mark.asyncio
async def test_a_receive_cancelled_while_it_waits_ends_and_the_layer_still_delivers(blocking_pops):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    receiving = asyncio.ensure_future(layer.receive(channel))
    await asyncio.wait_for(blocking_pops.sent.wait(), DEADLINE_S)
    receiving.cancel()
    done, _ = await asyncio.wait([receiving], timeout=DEADLINE_S)
    assert done and receiving.cancelled()

    await layer.send(channel, {"type": "hello"})
    message = await asyncio.wait_for(layer.receive(channel), DEADLINE_S)
    assert message == {"type": "hello"}


@pytest.mark.asyncio
async def test_a_burst_of_sockets_leaving_a_group_all_leave_it_even_with_few_connections(redis_url):
    layer = BlockingPoolRedisChannelLayer(
        hosts=[{"address": redis_url, "socket_timeout": None, "max_connections": 3, "timeout": DEADLINE_S}],
    )
    try:
        channels = [await layer.new_channel() for _ in range(60)]
        await asyncio.gather(*(layer.group_add("burst", channel) for channel in channels))
        await asyncio.gather(*(layer.group_discard("burst", channel) for channel in channels))
        left = await layer.connection(layer.consistent_hash("burst")).zcard(layer._group_key("burst"))
        assert left == 0
    finally:
        await layer.close_pools()
