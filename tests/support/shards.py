"""Placing test orgs in the store's shards (``core.keys``)."""

from __future__ import annotations

from core.keys import Keys


def org_in_shard(keys: Keys, shard: int, stem: str = "org") -> str:
    """An org name whose hash puts it in ``shard``."""
    n = 0
    while keys.shard_of_org(f"{stem}-{n}") != shard:
        n += 1
    return f"{stem}-{n}"
