"""The Sightwire HTTP API on Ray Serve.

``serve run serve_app:app`` and ``serve deploy cluster/serve_config.yaml`` build the application
from ``SIGHTWIRE_*`` settings (the runtime_env's ``env_vars``); a locally built profile (``tiny``,
``bench``) is first built where its models run, or refused with the reason
(``serve_app.node_profiles``). The attribute is computed on first access so importing the package
stays cheap.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from core.settings import Settings
        from serve_app.gateway import build_app
        from serve_app.node_profiles import prepare

        settings = Settings.from_env()
        prepare(settings)
        return build_app(settings)
    raise AttributeError(name)
