"""The client's records against the server's schemas: the client cannot import server code, so
its records are its own; this keeps them knowing every field and state the server sends."""

from __future__ import annotations

from enum import StrEnum

import pytest
from pydantic import BaseModel

import sightwire_client as sw
from core import schemas
from serve_app import schemas as api
from sightwire_client import models

IMAGE = {"id": "img_1", "object": "image", "url": "http://x/a.png", "models": {}, "sequence": 1,
         "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"}

RECORDS: list[tuple[type[BaseModel], type[BaseModel]]] = [
    (schemas.ImageRecord, models.Image), (schemas.ModelResult, models.ModelResult),
    (schemas.ErrorInfo, models.ErrorInfo), (schemas.GroupRecord, models.Group),
    (schemas.GroupCounts, models.GroupCounts), (schemas.GroupAggregates, models.GroupAggregates),
    (schemas.AggregateBucket, models.AggregateBucket), (schemas.ImageSummary, models.ImageSummary),
    (schemas.DeliveryLog, models.Delivery), (schemas.Attempt, models.Attempt),
    (api.EndpointEnabled, models.EndpointHealth), (api.WebhookSecret, models.WebhookSecret),
    (api.SecretInfo, models.SecretInfo), (schemas.ModelInfo, models.ModelInfo),
    (schemas.GroupImage, models.NewImage),
]
STATES: list[tuple[type[StrEnum], type[StrEnum]]] = [
    (schemas.ImageStatus, models.Status), (schemas.ModelStatus, models.ModelStatus),
    (schemas.EventType, models.EventType), (schemas.DeliveryStatus, models.DeliveryStatus),
    (schemas.EndpointState, models.EndpointState),
]


@pytest.mark.parametrize(("server", "client"), RECORDS, ids=lambda m: m.__name__)
def test_client_records_name_every_field_the_server_sends(server: type[BaseModel], client: type[BaseModel]) -> None:
    wire = {f.alias or name for name, f in server.model_fields.items()}
    known = {f.alias or name for name, f in client.model_fields.items()}
    assert wire - {"orgId"} <= known, f"{client.__name__} lacks {sorted(wire - known)}"


@pytest.mark.parametrize(("server", "client"), STATES, ids=lambda e: e.__name__)
def test_client_enums_know_every_server_state(server: type[StrEnum], client: type[StrEnum]) -> None:
    assert {s.value for s in server} == {c.value for c in client}


def test_a_server_record_parses_into_the_client_record() -> None:
    record = schemas.ImageRecord.model_validate({**IMAGE, "status": "partial", "externalId": "e", "models": {
        "m": {"status": "failed", "error": {"code": "model_failed", "message": "boom"}}}})
    image = sw.Image.model_validate_json(record.to_json())
    assert image.status is sw.Status.PARTIAL and image.external_id == "e"
    assert image.models["m"].status is sw.ModelStatus.FAILED and image.models["m"].error.code == "model_failed"


def test_records_tolerate_new_fields_and_new_states() -> None:
    image = sw.Image.model_validate({**IMAGE, "status": "expired", "models": {"m": {"status": "skipped"}}, "new": 1})
    assert image.status == "expired" and image.is_finished and image.model_extra == {"new": 1}
    assert image.models["m"].status == "skipped"
    assert sw.Image.model_validate({**IMAGE, "status": "queued"}).status is sw.Status.QUEUED
