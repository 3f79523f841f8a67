"""``Prefer: wait=N``: requests waiting for an image to finish, on one subscription per replica.

``ImageStore.finalize`` publishes the image id on ``Keys.images_finished`` in the transaction
that announces a finished state. Each API replica holds one pub/sub connection to that channel
and wakes the requests waiting for that id; a waiting request holds no Redis connection (it
reads the record only when woken, and once at each end). If the subscription drops, every
waiter is woken to re-read (a finish may have gone unheard) and the listener resubscribes.

On a Redis Cluster a PUBLISH reaches the subscribers of every node (the cluster bus relays it),
so one subscription to one node hears every finish, whichever master's script published it. The
listener takes the cluster's nodes in turn: after a failure it resubscribes on the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster

from core.schemas import ImageRecord
from core.supervise import in_background

log = logging.getLogger("sightwire.waiters")
RESUBSCRIBE_S = 0.5


class Waiters:
    def __init__(self, redis: Redis | RedisCluster, channel: str) -> None:
        self._redis = redis
        self._channel = channel
        self._waiting: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._subscriptions = 0  # on a cluster: which node the next subscription is on

    def running(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Listen for the lifetime of the block (the app's lifespan)."""
        return in_background(self._listen(), "sightwire-waiters")

    async def _listen(self) -> None:
        while True:
            try:
                async with await self._pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    self._wake_all()  # anything finished while unsubscribed is re-read
                    async for message in pubsub.listen():
                        self._wake(message["data"].decode())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("finished-image subscription failed; resubscribing")
                self._wake_all()
                await asyncio.sleep(RESUBSCRIBE_S)

    async def _pubsub(self) -> PubSub:
        """A pub/sub connection of the store's client; on a cluster, on its next node in turn
        (redis-py's ``ClusterPubSub`` would pick the same node every time: the channel's slot's)."""
        if not isinstance(self._redis, RedisCluster):
            return self._redis.pubsub(ignore_subscribe_messages=True)
        await self._redis.initialize()  # the node list (a no-op once the client has it)
        nodes = sorted(self._redis.get_nodes(), key=lambda node: node.name)
        node = nodes[self._subscriptions % len(nodes)]
        self._subscriptions += 1
        return self._redis.pubsub(node=node, ignore_subscribe_messages=True)

    def _wake(self, image_id: str) -> None:
        for event in self._waiting.get(image_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._waiting.values():
            for event in events:
                event.set()

    async def wait(self, image_id: str, read: Callable[[], Awaitable[ImageRecord | None]],
                   timeout_s: float) -> ImageRecord | None:
        """The record once finished, or as it is when ``timeout_s`` ends (``read`` reads it)."""
        event = asyncio.Event()
        self._waiting[image_id].add(event)  # before the first read: a finish after it wakes us
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                event.clear()
                record = await read()
                remaining = deadline - time.monotonic()
                if record is None or record.status.is_terminal or remaining <= 0:
                    return record
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
        finally:
            self._waiting[image_id].discard(event)
            if not self._waiting[image_id]:
                del self._waiting[image_id]
