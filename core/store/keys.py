"""Redis key names, in one place so every component agrees on the layout."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "sw"

    def api_key(self, key_hash: str) -> str:
        return f"{self.prefix}:apikey:{key_hash}"

    def org_secrets(self, org: str) -> str:
        return f"{self.prefix}:org:{org}:secrets"

    def image(self, image_id: str) -> str:
        return f"{self.prefix}:img:{image_id}"

    def org_images(self, org: str) -> str:
        return f"{self.prefix}:org:{org}:images"

    def group(self, group_id: str) -> str:
        return f"{self.prefix}:grp:{group_id}"

    def group_images(self, group_id: str) -> str:
        return f"{self.prefix}:grp:{group_id}:images"

    def group_sums(self, group_id: str) -> str:
        return f"{self.prefix}:grp:{group_id}:sums"

    def resource_deliveries(self, resource_id: str) -> str:
        return f"{self.prefix}:res:{resource_id}:deliveries"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def outbox(self) -> str:
        return f"{self.prefix}:outbox"

    def delivery(self, delivery_id: str) -> str:
        return f"{self.prefix}:dlv:{delivery_id}"

    def delivery_attempts(self, delivery_id: str) -> str:
        return f"{self.prefix}:dlv:{delivery_id}:attempts"

    def endpoint(self, url_hash: str) -> str:
        return f"{self.prefix}:ep:{url_hash}"
