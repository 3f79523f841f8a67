"""Group aggregates, kept incrementally: each finished image adds its contribution once.

An image contributes to two buckets, ``all`` and ``room:<label>``: a count, and for each score
(condition, quality) the number of scores, their sum, their confidence-weighted sum and the sum
of confidences. Means are ``sum / n`` and ``weighted_sum / confidence_sum``. When an image
changes (models added), its old contribution is subtracted and the new one added, so no
aggregate ever needs a rescan of the group. Failed images contribute nothing and are counted.
"""

from __future__ import annotations

from core.schemas import AggregateBucket, GroupAggregates, ImageRecord, ImageStatus, ModelStatus

ROOM_MODEL = "room_classification"
SCORE_MODELS = {"condition": "condition_score", "quality": "quality_score"}
UNKNOWN_ROOM = "unknown"
OVERALL = "all"


def _result(record: ImageRecord, model: str) -> dict | None:
    entry = record.models.get(model)
    return entry.result if entry is not None and entry.status is ModelStatus.COMPLETE else None


def room_of(record: ImageRecord) -> str:
    result = _result(record, ROOM_MODEL)
    return str(result["label"]) if result and "label" in result else UNKNOWN_ROOM


def score_of(record: ImageRecord, metric: str) -> tuple[int, float] | None:
    result = _result(record, SCORE_MODELS[metric])
    if not result or result.get("score") is None:
        return None
    return int(result["score"]), float(result.get("confidence", 1.0))


def contribution(record: ImageRecord) -> dict[str, float]:
    """The increments one image adds to its group's aggregate fields."""
    if record.status in (ImageStatus.FAILED, ImageStatus.CANCELED):
        return {}
    increments: dict[str, float] = {}
    for bucket in (OVERALL, f"room:{room_of(record)}"):
        increments[f"{bucket}|count"] = 1.0
        for metric in SCORE_MODELS:
            scored = score_of(record, metric)
            if scored is None:
                continue
            score, confidence = scored
            increments[f"{bucket}|{metric}_n"] = 1.0
            increments[f"{bucket}|{metric}_sum"] = float(score)
            increments[f"{bucket}|{metric}_wsum"] = score * confidence
            increments[f"{bucket}|{metric}_w"] = confidence
    return increments


def delta(old: dict[str, float], new: dict[str, float]) -> dict[str, float]:
    """What to add to the stored sums to replace ``old`` by ``new``."""
    changes = {key: new.get(key, 0.0) - old.get(key, 0.0) for key in old.keys() | new.keys()}
    return {key: value for key, value in changes.items() if value}


def _bucket(sums: dict[str, float], bucket: str) -> AggregateBucket:
    def mean(metric: str, total: str, weight: str) -> float | None:
        denominator = sums.get(f"{bucket}|{metric}_{weight}", 0.0)
        return round(sums[f"{bucket}|{metric}_{total}"] / denominator, 4) if denominator > 1e-9 else None

    return AggregateBucket(
        count=round(sums.get(f"{bucket}|count", 0.0)),
        condition_count=round(sums.get(f"{bucket}|condition_n", 0.0)),
        condition_mean=mean("condition", "sum", "n"),
        condition_weighted_mean=mean("condition", "wsum", "w"),
        quality_count=round(sums.get(f"{bucket}|quality_n", 0.0)),
        quality_mean=mean("quality", "sum", "n"),
        quality_weighted_mean=mean("quality", "wsum", "w"),
    )


def aggregates(sums: dict[str, float], failed: int) -> GroupAggregates:
    rooms = sorted({key.split("|", 1)[0][len("room:"):] for key in sums if key.startswith("room:")})
    by_room = {room: _bucket(sums, f"room:{room}") for room in rooms}
    return GroupAggregates(
        overall=_bucket(sums, OVERALL),
        by_room={room: bucket for room, bucket in by_room.items() if bucket.count > 0},
        failed_excluded=failed,
    )
