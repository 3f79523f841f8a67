"""The notifier's view of each endpoint: one ``Lane`` per endpoint id, and ``Lanes``, the
registry and the in-flight budget they share.

A lane holds only what the notifier needs between Redis round trips: its sends in flight (at
most one per resource, so a receiver sees a resource's updates in order), the newer update of a
busy resource that waits for that send (parked), the concurrency it may use now (halved when the
endpoint asks to slow down, grown back by one per success) and what Redis last said of its
breaker. Everything durable is in Redis, so a restarted notifier starts with no lanes at all.

Room is decided here: a lane's room is its cap minus its sends; the claim is told the room of
every lane that differs from a fresh one (``Lanes.room``), and the budget caps sends in all.
Two caps are shared by several lanes: sends of one organisation (all its URLs), and sends to one
destination host (all orgs, every port and path), counted in ``start``/``finish``; the claim is
told what each org and host with sends in flight may still send (``Lanes.shared``). So one org's
many URLs on a tarpit host hold at most those caps, never the whole budget.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

from core.delivery import SharedRoom, destination_host, endpoint_of
from core.schemas import Delivery, EndpointState


class Lane:
    def __init__(self, eid: str, concurrency: int, org: str, host: str) -> None:
        self.eid = eid
        self.org = org
        self.host = host
        self.full_cap = concurrency
        self.cap = concurrency  # lowered while the endpoint asks us to slow down
        self.sending: dict[str, tuple[Delivery, asyncio.Task[object]]] = {}  # resource id → its send
        self.parked: dict[str, Delivery] = {}  # resource id → the newest update waiting for that send
        self.state: EndpointState | None = None  # the breaker as last recorded (None: not seen yet)
        self.pending = 0  # deliveries it had pending then

    @property
    def room(self) -> int:
        return self.cap - len(self.sending)

    @property
    def engaged(self) -> bool:
        """Sending, or slowed down: its room differs from a fresh lane's."""
        return bool(self.sending) or self.cap < self.full_cap

    @property
    def idle(self) -> bool:
        return not self.sending and not self.parked and self.cap == self.full_cap

    def busy(self, resource_id: str) -> bool:
        return resource_id in self.sending

    def holds(self, delivery_id: str) -> bool:
        """Whether this delivery is already ours (being sent, or parked)."""
        return any(d.id == delivery_id for d, _ in self.sending.values()) or any(
            d.id == delivery_id for d in self.parked.values()
        )

    def park(self, delivery: Delivery) -> Delivery | None:
        """Keep the newer of ``delivery`` and the update already parked for its resource; returns
        the one set aside (to be superseded), if any."""
        older = self.parked.get(delivery.resource_id)
        if older is not None and older.sequence > delivery.sequence:
            older, delivery = delivery, older
        self.parked[delivery.resource_id] = delivery
        return older

    def slow_down(self) -> None:
        self.cap = max(1, self.cap // 2)

    def regrow(self) -> None:
        self.cap = min(self.full_cap, self.cap + 1)


class Lanes:
    def __init__(self, concurrency: int, max_in_flight: int, org_cap: int, host_cap: int) -> None:
        self.concurrency = concurrency
        self.max_in_flight = max_in_flight
        self.org_cap = min(org_cap, max_in_flight)
        self.host_cap = min(host_cap, max_in_flight)
        self.in_flight = 0
        self._by_org: Counter[str] = Counter()
        self._by_host: Counter[str] = Counter()
        self._lanes: dict[str, Lane] = {}
        self._engaged: set[str] = set()

    def lane(self, delivery: Delivery) -> Lane:
        eid = endpoint_of(delivery)
        lane = self._lanes.get(eid)
        if lane is None:
            lane = self._lanes[eid] = Lane(eid, self.concurrency, delivery.org_id, destination_host(delivery.url))
        return lane

    def holds(self, delivery: Delivery) -> bool:
        lane = self._lanes.get(endpoint_of(delivery))
        return lane is not None and lane.holds(delivery.id)

    @property
    def free(self) -> int:
        """Sends that may start now, all endpoints together."""
        return self.max_in_flight - self.in_flight

    def room(self) -> dict[str, int]:
        """The room of every lane that has less than a fresh one (the claim's ``busy``)."""
        return {eid: self._lanes[eid].room for eid in self._engaged}

    def shared(self) -> SharedRoom:
        """What each org and destination host with sends in flight may still send (the claim's
        ``shared``)."""
        return SharedRoom(
            self.org_cap,
            self.host_cap,
            {org: self.org_cap - n for org, n in self._by_org.items()},
            {host: self.host_cap - n for host, n in self._by_host.items()},
        )

    def start(self, lane: Lane, delivery: Delivery, task: asyncio.Task[object]) -> None:
        lane.sending[delivery.resource_id] = (delivery, task)
        self.in_flight += 1
        self._by_org[lane.org] += 1
        self._by_host[lane.host] += 1
        self._track(lane)

    def finish(self, lane: Lane, delivery: Delivery) -> None:
        if lane.sending.pop(delivery.resource_id, None) is not None:
            self.in_flight -= 1
            for counter, key in ((self._by_org, lane.org), (self._by_host, lane.host)):
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]
        self._track(lane)

    def slow_down(self, lane: Lane) -> None:
        lane.slow_down()
        self._track(lane)

    def regrow(self, lane: Lane) -> None:
        lane.regrow()
        self._track(lane)

    def seen(self) -> list[Lane]:
        """Lanes whose breaker state has been recorded (the endpoints this notifier sent to)."""
        return [lane for lane in self._lanes.values() if lane.state is not None]

    def forget(self, lane: Lane) -> None:
        """The endpoint is gone from Redis: stop reporting it, and drop the lane once idle."""
        lane.state = None
        self._track(lane)

    def tasks(self) -> Iterator[asyncio.Task[object]]:
        for lane in self._lanes.values():
            for _, task in lane.sending.values():
                yield task

    def _track(self, lane: Lane) -> None:
        if lane.engaged:
            self._engaged.add(lane.eid)
        else:
            self._engaged.discard(lane.eid)
        if lane.idle and lane.state is None and self._lanes.get(lane.eid) is lane:
            del self._lanes[lane.eid]
