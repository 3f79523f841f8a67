"""The Sightwire API from Python: ``Client`` / ``AsyncClient``, typed records, typed errors, and
``verify_webhook`` for receivers. Depends on httpx and pydantic only."""

__version__ = "0.1.0"

from sightwire_client._api import AsyncClient, Client
from sightwire_client._protocol import Polling, Retries
from sightwire_client.errors import (
    APIError,
    BadRequest,
    Conflict,
    DeliveryInFlight,
    DeliverySuperseded,
    EndpointDisabled,
    Forbidden,
    ImageNotRunnable,
    InvalidRequest,
    InvalidResponse,
    NotFound,
    NothingToRetry,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    SightwireError,
    TransportError,
    Unauthorized,
    VerificationFailure,
    WaitTimeout,
    WebhookVerificationError,
)
from sightwire_client.models import (
    Delivery,
    DeliveryStatus,
    EndpointHealth,
    EndpointState,
    EventType,
    Group,
    Image,
    ModelInfo,
    ModelStatus,
    NewImage,
    Status,
    WebhookEvent,
    WebhookSecret,
)
from sightwire_client.webhooks import EventTracker, verify_webhook

__all__ = [
    "APIError", "AsyncClient", "BadRequest", "Client", "Conflict", "Delivery", "DeliveryInFlight",
    "DeliveryStatus", "DeliverySuperseded", "EndpointDisabled", "EndpointHealth", "EndpointState",
    "EventTracker", "EventType", "Forbidden", "Group", "Image", "ImageNotRunnable", "InvalidRequest",
    "InvalidResponse", "ModelInfo",
    "ModelStatus", "NewImage", "NotFound", "NothingToRetry", "PayloadTooLarge", "Polling", "RateLimited", "Retries",
    "ServerError", "ServiceUnavailable", "SightwireError", "Status", "TransportError", "Unauthorized",
    "VerificationFailure", "WaitTimeout", "WebhookEvent", "WebhookSecret", "WebhookVerificationError",
    "verify_webhook",
]
