"""Request and response bodies of the API that are not records of the store (``core.schemas``
holds those): pages, the webhook secret's view, and the small action bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field

from core.schemas import DeliveryLog, EndpointHealth, Wire
from core.wire_json import Text

MAX_GRACE_S = 7 * 24 * 3600.0


class DeliveryPage(Wire):
    data: list[DeliveryLog]


class EndpointPage(Wire):
    data: list[EndpointHealth]


class EndpointEnable(Wire):
    """Body of ``POST /v1/endpoints/enable``."""

    model_config = ConfigDict(extra="forbid")

    url: Text = Field(min_length=1)


class EndpointEnabled(EndpointHealth):
    released: int = 0  # held deliveries made due by this call


class SecretInfo(Wire):
    secret: str
    created_at: datetime | None = None
    expires_at: datetime | None = None


class WebhookSecret(Wire):
    """The secret that signs now, and older ones still signing during their grace period."""

    secret: str
    created_at: datetime | None = None
    previous: list[SecretInfo] = Field(default_factory=list)

    @classmethod
    def from_entries(cls, entries: list[dict[str, Any]]) -> WebhookSecret:
        """From the store's entries, newest first (``Accounts.secret_entries``)."""
        current, *older = entries
        return cls(
            secret=current["secret"],
            created_at=current.get("createdAt"),
            previous=[SecretInfo(secret=e["secret"], created_at=e.get("createdAt"), expires_at=e.get("expiresAt"))
                      for e in older],
        )


class SecretRotate(Wire):
    """Body of ``POST /v1/webhook-secret/rotate`` (optional)."""

    model_config = ConfigDict(extra="forbid")

    grace_seconds: float | None = Field(default=None, ge=0, le=MAX_GRACE_S)


class WebhookTest(Wire):
    """Body of ``POST /v1/webhooks/test``."""

    model_config = ConfigDict(extra="forbid")

    url: Text = Field(min_length=1)


class EndpointRecover(Wire):
    """Body of ``POST /v1/endpoints/recover``."""

    model_config = ConfigDict(extra="forbid")

    url: Text = Field(min_length=1)
    since: datetime  # RFC 3339; deliveries created at or after it


class EndpointRecovered(Wire):
    url: str
    recovered: int  # deliveries made due now
