"""Request checks that need settings or the registry; each failure is a 422 naming its field."""

from __future__ import annotations

from typing import Any

from core.urlpolicy import UrlRejected
from core.wire_json import utf8_size
from serve_app.context import ApiContext
from serve_app.problems import invalid


def check_models(ctx: ApiContext, models: list[str]) -> None:
    unknown = [m for m in models if m not in ctx.registry]
    if unknown:
        raise invalid("models", f"unknown model(s) {unknown}; available: {ctx.registry.names()}")


def check_urls(ctx: ApiContext, **urls: str | None) -> None:
    """Each URL against the policy; keyword names are the fields reported."""
    for name, url in urls.items():
        if url is None:
            continue
        try:
            ctx.policy.check_url(url)
        except UrlRejected as exc:
            raise invalid(name, exc.message) from None


def check_metadata(ctx: ApiContext, metadata: dict[str, Any] | None, field: str = "metadata") -> None:
    """The size limit, in UTF-8 bytes of the stored JSON (depth and numbers: ``core.wire_json``)."""
    limit = ctx.settings.max_metadata_bytes
    if metadata is not None and (size := utf8_size(metadata)) > limit:
        raise invalid(field, f"metadata is {size} bytes of UTF-8 JSON; the limit is {limit}")
