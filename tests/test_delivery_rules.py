"""The delivery component's seams: the Lua scripts see the key names and enum values Python
defines; what a change announces (``core.events``); the retry and slow-down policy; the
notifier's per-endpoint lanes."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from core.delivery import SharedRoom, scripts
from core.delivery.outcomes import Outcome, RetryResult
from core.delivery.policy import DeliveryPolicy, RetryPolicy, SlowdownPolicy
from core.events import Events, GroupMarks, image_event, thin, wants_summaries
from core.keys import SCRIPT_KEYS, Keys, org_hash
from core.schemas import (
    Attempt,
    Delivery,
    DeliveryStatus,
    DisabledReason,
    EndpointState,
    EventType,
    GroupAggregates,
    GroupCounts,
    GroupRecord,
    ImageRecord,
    ImageStatus,
)
from core.settings import Settings
from core.store import Store
from core.tokens import new_id
from notifier.lanes import Lanes
from tests.support.shards import org_in_shard

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def test_scripts_build_the_keys_python_names_in_the_calls_shard(store: Store) -> None:
    keys = Keys("swtest-layout", shards=8)
    org = org_in_shard(keys, 5)
    resource_id = new_id("dlv", org_hash(org))
    per_org = {"org_endpoints"}
    body = "return {" + ", ".join(f"K.{name}(ARGV[{3 if name in per_org else 2}])" for name in SCRIPT_KEYS) + "}"
    argv = json.dumps({"prefix": keys.base(5)})
    fixed = (keys.outbox(5), keys.outbox_wake(5))
    built = await store.redis.eval(scripts.compose(body), 2, *fixed, argv, resource_id, org)
    expected = [getattr(keys, name)(org if name in per_org else resource_id) for name in SCRIPT_KEYS]
    assert [b.decode() for b in built] == expected
    assert all(key.startswith("swtest-layout:{s5}:") for key in expected)


@pytest.mark.parametrize("enum", [DeliveryStatus, EndpointState, DisabledReason, Outcome, RetryResult])
async def test_scripts_see_the_python_enum_values(store: Store, enum: type) -> None:
    body = "return {" + ", ".join(f"{enum.__name__}.{m.name}" for m in enum) + "}"
    seen = await store.redis.eval(scripts.compose(body), 2, "k1", "k2", json.dumps({"prefix": "swtest"}))
    assert [s.decode() for s in seen] == [m.value for m in enum]


def test_a_name_the_loader_cannot_fill_in_stops_the_load() -> None:
    with pytest.raises(KeyError):
        scripts.compose("return Outcome.NOT_A_MEMBER")
    with pytest.raises(KeyError):
        scripts.compose("return K.not_a_key(A.id)")
    with pytest.raises(ValueError, match="cannot expand"):
        scripts.compose("return K.delivery(string.lower(A.id))")


def image(status: ImageStatus, sequence: int = 3, **extra: object) -> ImageRecord:
    return ImageRecord(id="img_1", status=status, url="http://example.com/a.png", models={}, sequence=sequence,
                       created_at=NOW, updated_at=NOW, **extra)


def group(status: ImageStatus, sequence: int = 5, total: int = 4) -> GroupRecord:
    return GroupRecord(id="grp_1", status=status, models=["m"], counts=GroupCounts(total=total),
                       aggregates=GroupAggregates(), sequence=sequence, created_at=NOW, updated_at=NOW,
                       webhook_url="http://example.com/hook")


def test_image_events() -> None:
    assert image_event(image(ImageStatus.PROCESSING), 0) is None
    assert image_event(image(ImageStatus.COMPLETE), 0) is EventType.IMAGE_COMPLETED
    assert image_event(image(ImageStatus.PARTIAL), 0) is EventType.IMAGE_COMPLETED
    assert image_event(image(ImageStatus.FAILED), 0) is EventType.IMAGE_FAILED
    assert image_event(image(ImageStatus.COMPLETE, sequence=7), 3) is EventType.IMAGE_UPDATED
    assert image_event(image(ImageStatus.COMPLETE, sequence=3), 3) is None  # this state went out


def test_group_events_and_progress_throttle() -> None:
    events = Events(progress_interval_s=10.0)
    running = group(ImageStatus.PROCESSING)
    first = events.group_due(running, GroupMarks(notified_seq=1), now=100.0)
    assert first is not None and first.event is EventType.GROUP_PROGRESS
    assert first.marks == GroupMarks(notified_seq=5, progress_at=100.0)
    assert events.group_due(group(ImageStatus.PROCESSING, sequence=6), first.marks, now=105.0) is None
    done = events.group_due(group(ImageStatus.COMPLETE, sequence=6), first.marks, now=105.0)
    assert done is not None and done.event is EventType.GROUP_COMPLETED and done.marks.completed_sent
    later = events.group_due(group(ImageStatus.COMPLETE, sequence=9), done.marks, now=106.0)
    assert later is not None and later.event is EventType.GROUP_UPDATED
    assert events.group_due(group(ImageStatus.COMPLETE, sequence=9), later.marks, now=107.0) is None
    assert not wants_summaries(EventType.GROUP_PROGRESS, running)
    assert wants_summaries(EventType.GROUP_COMPLETED, running)
    assert not wants_summaries(EventType.GROUP_COMPLETED, group(ImageStatus.COMPLETE, total=50_000))


def test_filter_and_thin_payload() -> None:
    events = Events(payload_cap_bytes=1_000)
    quiet = image(ImageStatus.COMPLETE, webhook_url="http://example.com/h", webhook_events=[EventType.IMAGE_FAILED])
    assert events.announce("org_1", quiet, EventType.IMAGE_COMPLETED) is None
    assert events.announce("org_1", image(ImageStatus.COMPLETE), EventType.IMAGE_COMPLETED) is None  # no URL
    big = image(ImageStatus.COMPLETE, webhook_url="http://example.com/h", metadata={"x": "y" * 2_000})
    announced = events.announce("org_1", big, EventType.IMAGE_COMPLETED)
    assert announced is not None and announced.resource_id == "img_1" and announced.sequence == 3
    body = json.loads(announced.body)
    assert body["type"] == "image.completed" and body["data"] == thin(big.model_dump(mode="json", by_alias=True))
    assert body["data"]["href"] == "/v1/images/img_1" and body["data"]["thin"] is True
    small = events.announce("org_1", image(ImageStatus.COMPLETE, webhook_url="http://example.com/h"),
                            EventType.IMAGE_COMPLETED)
    assert small is not None and "thin" not in json.loads(small.body)["data"]


def attempt(status: int | None, retry_after: float | None = None) -> Attempt:
    ok = status is not None and 200 <= status < 300
    return Attempt(at=NOW, status_code=status, latency_ms=1.0, succeeded=ok, retry_after_s=retry_after)


def test_slowdown_policy() -> None:
    policy = SlowdownPolicy(default_s=5.0, retry_after_min_s=1.0, retry_after_max_s=60.0)
    assert policy.pause_s(attempt(200, 30)) == 0.0
    assert policy.pause_s(attempt(None)) == 0.0
    assert policy.pause_s(attempt(429)) == 5.0
    assert policy.pause_s(attempt(503, 0.1)) == 1.0 and policy.pause_s(attempt(503, 9999)) == 60.0
    assert policy.pause_s(attempt(500, 7)) == 7.0  # Retry-After on any 5xx is honoured
    assert policy.pause_s(attempt(500)) == 0.0 and policy.pause_s(attempt(404, 7)) == 0.0
    assert DeliveryPolicy.is_gone(attempt(410)) and not DeliveryPolicy.is_gone(attempt(404))


def test_retry_policy_waits_at_least_the_pause() -> None:
    retry = RetryPolicy((0.0, 5.0), jitter=0.0)
    rng = random.Random(1)
    assert retry.next_at(1, 0.0, rng, NOW) == NOW + timedelta(seconds=5)
    assert retry.next_at(1, 30.0, rng, NOW) == NOW + timedelta(seconds=30)
    assert retry.next_at(2, 0.0, rng, NOW) is None


def test_policy_from_settings() -> None:
    settings = Settings(breaker_failure_threshold=3, slowdown_s=2.0, retry_schedule_s=(0, 1))
    policy = DeliveryPolicy.from_settings(settings)
    assert policy.breaker.script_args()["failure_threshold"] == 3
    assert policy.slowdown.default_s == 2.0 and policy.retry.schedule_s == (0, 1)


def delivery(resource: str, sequence: int = 1, eid: str = "ep_a") -> Delivery:
    return Delivery(id=f"dlv_{resource}_{sequence}", webhook_id="msg", org_id="org", url="http://h/x",
                    event_type=EventType.IMAGE_UPDATED, resource_id=resource, sequence=sequence, body="{}",
                    created_at=NOW, endpoint_id=eid)


async def test_lanes_track_room_parking_and_caps() -> None:
    lanes = Lanes(concurrency=4, max_in_flight=6, org_cap=5, host_cap=9)
    first = delivery("img_1")
    lane = lanes.lane(first)
    task = asyncio.get_running_loop().create_future()
    lanes.start(lane, first, task)
    assert lanes.room() == {"ep_a": 3} and lanes.free == 5 and lane.busy("img_1")
    assert lanes.shared() == SharedRoom(5, 6, {"org": 4}, {"h": 5})  # the host cap clamped to the budget
    assert lanes.holds(first) and not lanes.holds(delivery("img_2"))
    assert lane.park(delivery("img_1", 3)) is None
    set_aside = lane.park(delivery("img_1", 2))  # older than the parked one: set aside
    assert set_aside is not None and set_aside.sequence == 2 and lane.parked["img_1"].sequence == 3
    assert lanes.holds(delivery("img_1", 3))
    lanes.slow_down(lane)
    lanes.slow_down(lane)
    assert lane.cap == 1 and lanes.room() == {"ep_a": 0}
    lanes.finish(lane, first)
    lane.parked.clear()
    assert lanes.in_flight == 0 and lanes.room() == {"ep_a": 1}  # slowed, so still reported
    assert lanes.shared() == SharedRoom(5, 6, {}, {})
    for _ in range(5):
        lanes.regrow(lane)
    assert lane.cap == 4 and lanes.room() == {} and lanes.seen() == []
    assert lanes.lane(first) is not lane  # idle and never recorded: dropped
    task.cancel()
