"""A fair limiter: bounded capacity shared by tenants round-robin, with per-tenant and per-key caps.

Every stage of the online engine has a bound (fetch slots, decode threads, bytes of downloaded
bodies, pixels of decoded images, images in flight to a model), and jobs of many organisations
wait at each. A FIFO semaphore would let one org's burst of 10,000 queue ahead of another
org's single image at every stage; ``FairLimiter`` instead serves its waiters by *deficit
round-robin* over their flow (the org): each visit an org may take ``quantum x weight`` units,
so two orgs with waiting work share the capacity equally (or by weight) whatever their queue
lengths. It also bounds what one flow, one key (a destination host) and one flow on one key may
hold at once, and a waiter blocked by its key's cap never blocks waiters of other keys (no
head-of-line blocking): each flow keeps one queue per key and skips the keys that are full. The
flow-on-key cap, set below the key's, keeps slots of a shared host free for other flows: a slot
already held cannot be taken back, so without it a second org waits for the first org's slow
requests to that host to end.

Acquisitions have a cost (1 for a slot; bytes or pixels for a budget). A cost larger than a
bound is clamped to it, so an oversized request waits until it can hold that bound alone rather
than forever. While the flow at the head of the round has credit for its next request but the
free capacity is too small, nothing else is granted: the capacity is kept for it, so a large
request is never starved by a stream of small ones (the fair-queuing rule; it costs a short idle
gap, never a deadlock, because every holder releases).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

MIN_WEIGHT = 1 / 64  # a flow's weight is at least this: every flow with waiting work gets a turn


@dataclass(eq=False)
class Grant:
    """What one acquisition holds; ``release`` gives it back (once; later calls do nothing)."""

    limiter: FairLimiter
    flow: str
    key: Hashable | None
    cost: int
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limiter._give_back(self)


@dataclass(eq=False)
class _Waiter:
    grant: Grant
    future: asyncio.Future[Grant]


@dataclass(eq=False)
class _Flow:
    """One flow's state: what it holds, its credit in the round, its waiters by key."""

    held: int = 0
    key_held: Counter[Hashable] = field(default_factory=Counter)  # of ``held``, by key
    deficit: float = 0.0
    queues: OrderedDict[Hashable | None, deque[_Waiter]] = field(default_factory=OrderedDict)

    @property
    def waiting(self) -> bool:
        return bool(self.queues)


class FairLimiter:
    """``capacity`` units shared round-robin by flow; see the module docstring.

    ``flow_cap`` bounds the units one flow holds, ``key_cap`` the units one key holds,
    ``flow_key_cap`` the units one flow holds of one key (``None``: unbounded); ``weight(flow)``
    scales a flow's share (default 1; must be > 0)."""

    def __init__(
        self,
        capacity: int,
        *,
        flow_cap: int | None = None,
        key_cap: int | None = None,
        flow_key_cap: int | None = None,
        quantum: int = 1,
        weight: Callable[[str], float] | None = None,
    ) -> None:
        if min(v for v in (capacity, quantum, flow_cap, key_cap, flow_key_cap) if v is not None) < 1:
            raise ValueError("capacity, quantum and caps must be at least 1")
        self.capacity = capacity
        self.flow_cap = flow_cap
        self.key_cap = key_cap
        self.flow_key_cap = flow_key_cap
        self.quantum = quantum
        self._weight = weight or (lambda _flow: 1.0)
        self._free = capacity
        self._flows: dict[str, _Flow] = {}
        self._ring: deque[str] = deque()  # flows with waiters; the head is being served
        self._last_served: str | None = None  # the flow of the last grant
        self._key_held: Counter[Hashable] = Counter()

    # -- the public surface ------------------------------------------------------------------

    @asynccontextmanager
    async def hold(self, flow: str, cost: int = 1, key: Hashable | None = None) -> AsyncIterator[Grant]:
        grant = await self.acquire(flow, cost, key)
        try:
            yield grant
        finally:
            grant.release()

    async def acquire(self, flow: str, cost: int = 1, key: Hashable | None = None) -> Grant:
        """Wait for ``cost`` units for ``flow`` (and ``key``); the caller must ``release`` them."""
        cost = self._clamp(max(1, cost), key)
        grant = Grant(self, flow, key, cost)
        future: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        self._enqueue(_Waiter(grant, future))
        self._dispatch()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted just as the caller was cancelled
                grant.release()
            else:
                self._forget(grant, future)
            raise

    @property
    def free(self) -> int:
        return self._free

    def held(self, flow: str) -> int:
        state = self._flows.get(flow)
        return state.held if state else 0

    def waiters(self) -> int:
        """Acquisitions waiting now, all flows together."""
        return sum(len(queue) for state in self._flows.values() for queue in state.queues.values())

    # -- bookkeeping -------------------------------------------------------------------------

    def _clamp(self, cost: int, key: Hashable | None) -> int:
        bounds = [self.capacity, self.flow_cap, *((self.key_cap, self.flow_key_cap) if key is not None else ())]
        return min(cost, *(b for b in bounds if b is not None))

    def _enqueue(self, waiter: _Waiter) -> None:
        flow = waiter.grant.flow
        state = self._flows.setdefault(flow, _Flow())
        if not state.waiting:
            self._ring.append(flow)
            if len(self._ring) == 1:  # alone in the round: its visit starts now
                state.deficit = self._quantum(flow)
        state.queues.setdefault(waiter.grant.key, deque()).append(waiter)

    def _forget(self, grant: Grant, future: asyncio.Future[Grant]) -> None:
        """A waiter was cancelled before its grant: drop it, and its flow if that was the last."""
        state = self._flows.get(grant.flow)
        if state is not None:
            queue = state.queues.get(grant.key)
            if queue is not None:
                for waiter in queue:
                    if waiter.future is future:
                        queue.remove(waiter)
                        break
                if not queue:
                    del state.queues[grant.key]
            if not state.waiting and grant.flow in self._ring:
                self._leave_ring(grant.flow)
        self._dispatch()  # the cancelled waiter may have been holding the capacity for itself

    def _give_back(self, grant: Grant) -> None:
        self._free += grant.cost
        state = self._flows[grant.flow]
        state.held -= grant.cost
        if grant.key is not None:
            for held in (self._key_held, state.key_held):
                held[grant.key] -= grant.cost
                if not held[grant.key]:
                    del held[grant.key]
        if not state.held and not state.waiting:
            del self._flows[grant.flow]
        self._dispatch()

    def _quantum(self, flow: str) -> float:
        return self.quantum * max(self._weight(flow), MIN_WEIGHT)

    def _rotate(self) -> None:
        """End the head's visit (its unspent credit stays: it is saving up for a larger
        request) and start the next flow's visit with a quantum."""
        self._ring.rotate(-1)
        self._flows[self._ring[0]].deficit += self._quantum(self._ring[0])

    def _leave_ring(self, flow: str) -> None:
        was_head = self._ring[0] == flow
        self._ring.remove(flow)
        state = self._flows.get(flow)
        if state is not None:
            state.deficit = 0.0
            if not state.held:
                del self._flows[flow]
        if was_head and self._ring:
            self._flows[self._ring[0]].deficit += self._quantum(self._ring[0])

    def _fits_caps(self, state: _Flow, key: Hashable | None, cost: int) -> bool:
        if self.flow_cap is not None and state.held + cost > self.flow_cap:
            return False
        if key is None:
            return True
        if self.flow_key_cap is not None and state.key_held[key] + cost > self.flow_key_cap:
            return False
        return self.key_cap is None or self._key_held[key] + cost <= self.key_cap

    def _eligible(self, state: _Flow) -> tuple[Hashable | None, _Waiter] | None:
        """The flow's first waiter (over its keys, oldest key first) that its caps allow.
        Waiters cancelled meanwhile (their task has not run its cleanup yet) are dropped."""
        for key in list(state.queues):
            queue = state.queues[key]
            while queue and queue[0].future.done():
                queue.popleft()
            if not queue:
                del state.queues[key]
            elif self._fits_caps(state, key, queue[0].grant.cost):
                return key, queue[0]
        return None

    def _dispatch(self) -> None:
        idle = 0  # visits in a row that granted nothing
        while self._ring and self._free > 0:
            if idle >= len(self._ring) and not self._fast_forward():
                # A whole round, and every waiter is capped. The round ends where it began: on the
                # flow served last, with fresh credit. Left there, it would take the next unit freed
                # on a full key too, and every one after (another flow waiting on that key got none
                # until its backlog was gone): its visit is over, the next flow's begins.
                if len(self._ring) > 1 and self._ring[0] == self._last_served:
                    self._rotate()
                return
            flow = self._ring[0]
            state = self._flows[flow]
            found = self._eligible(state)
            if found is None and not state.waiting:
                self._leave_ring(flow)
                continue
            if found is None:
                state.deficit = 0.0  # no credit is banked while capped
                idle += 1
                self._rotate()
                continue
            key, waiter = found
            if state.deficit < waiter.grant.cost:
                idle += 1
                self._rotate()
                continue
            if self._free < waiter.grant.cost:
                return  # keep the capacity for it: see the module docstring
            idle = 0
            self._grant(state, key, waiter)

    def _fast_forward(self) -> bool:
        """After a round in which no flow could afford its next request, credit every flow the
        rounds the first of them still needs, at once instead of visit by visit (a budget's
        costs may be many quanta). False when every waiter is capped instead."""
        needs: list[tuple[_Flow, float, float]] = []
        for flow in self._ring:
            state = self._flows[flow]
            found = self._eligible(state)
            if found is not None:
                needs.append((state, found[1].grant.cost - state.deficit, self._quantum(flow)))
        if not needs:
            return False
        rounds = min(math.ceil(need / quantum) for _, need, quantum in needs)
        for state, _, quantum in needs:
            state.deficit += max(0, rounds - 1) * quantum
        return True

    def _grant(self, state: _Flow, key: Hashable | None, waiter: _Waiter) -> None:
        queue = state.queues[key]
        queue.popleft()
        if queue:
            state.queues.move_to_end(key)  # the flow's keys take turns too
        else:
            del state.queues[key]
        grant = waiter.grant
        self._free -= grant.cost
        state.held += grant.cost
        state.deficit -= grant.cost
        if key is not None:
            self._key_held[key] += grant.cost
            state.key_held[key] += grant.cost
        self._last_served = grant.flow
        waiter.future.set_result(grant)
        if not state.waiting:
            self._leave_ring(grant.flow)

