"""The Sightwire HTTP API on Ray Serve.

``serve run serve_app:app`` builds the application from ``SIGHTWIRE_*`` settings; the attribute
is computed on first access so importing the package stays cheap.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from core.settings import Settings
        from serve_app.gateway import build_app

        return build_app(Settings.from_env())
    raise AttributeError(name)
