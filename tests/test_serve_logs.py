"""``sightwire serve`` shows the processor's, the notifier's and the models' log lines in its terminal.

The command runs as a child process (its own local Ray) with one tiny model and a private Redis.
It runs with ``SIGHTWIRE_LOG_FORMAT=json``. Once ready, its output must hold the model replica's
and the notifier's INFO lines (each prefixed by Ray with the process it came from, then one JSON
object) and say where the log folder is. An image whose URL answers nothing is posted: the API's
line carries Serve's request id (the response's ``X-Request-Id``), the org and the image id, the
processor's line the org, the image id and the error code. Then Redis is stopped for a moment,
and the processor's warning about it must appear too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from core.delivery.endpoints import endpoint_id
from core.settings import Settings
from core.store import Store
from serve_app.local import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = """
models:
  object_detection:
    task: object-detection
    checkpoint: {models_dir}/tiny/object_detection
    input_size: 256
    resources: {{num_cpus: 0, num_gpus: 0}}
"""

pytestmark = pytest.mark.timeout(300)


class Output:
    """The child's merged stdout and stderr, collected by a thread, searchable while it runs."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_json(self, pattern: str, timeout_s: float) -> dict:
        """The JSON object of the first line matching ``pattern`` (after Ray's process prefix)."""
        line = self.wait_for(pattern, timeout_s)
        return json.loads(line[line.index("{"):])

    def wait_for(self, pattern: str, timeout_s: float) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                found = next((line for line in self.lines if regex.search(line)), None)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    tail = "\n".join(self.lines[-60:])
                    raise AssertionError(f"no line matching {pattern!r} in {timeout_s}s; output ends:\n{tail}")
                self._changed.wait(remaining)


async def api_key(settings: Settings, org: str) -> str:
    store = Store.from_settings(settings)
    try:
        return await store.accounts.create_api_key(org)
    finally:
        await store.close()


@pytest.mark.own_ray
def test_sightwire_serve_shows_processor_notifier_and_model_logs(tmp_path: Path, tiny_models_dir: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY.format(models_dir=tiny_models_dir))
    redis = RedisServer(tmp_path / "redis").start()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(ROOT), REDIS_URL=redis.url, SIGHTWIRE_KEY_PREFIX="swlogs",
               SIGHTWIRE_DATA_DIR=str(tmp_path / "data"), SIGHTWIRE_MODELS_DIR=str(tiny_models_dir),
               PYTHONUNBUFFERED="1", SIGHTWIRE_LOG_FORMAT="json", SIGHTWIRE_ALLOW_PRIVATE_CIDRS="127.0.0.0/8")
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "serve_app.cli", "serve", "--port", str(port), "--models", str(registry)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    output = Output(serve)
    try:
        output.wait_for(r"^Sightwire ready on ", 240)
        loaded = output.wait_json(r'object_detection.*"logger": "sightwire\.models".* loaded on cpu', 60)
        assert loaded["level"] == "INFO", loaded
        output.wait_for(r'Notifier.*"sightwire\.notifier", "message": "notifier loop started', 60)
        logs_line = output.wait_for(r"^logs: ", 5)
        logs_dir = Path(re.search(r"in (\S+) \(Serve", logs_line).group(1))
        assert (logs_dir / "serve").is_dir(), logs_line
        metrics_url = output.wait_for(r"^metrics: http://127\.0\.0\.1:\d+/metrics ", 5).split()[1]
        assert "# TYPE" in httpx.get(metrics_url, timeout=10).text

        org = "org_logs"
        key = asyncio.run(api_key(Settings(redis_url=redis.url, key_prefix="swlogs"), org))
        auth = {"Authorization": f"Bearer {key}"}
        gone, hooks = (f"http://127.0.0.1:{free_port()}/{path}" for path in ("gone.png", "hooks"))
        response = httpx.post(f"http://127.0.0.1:{port}/v1/images", headers=auth,
                              json={"url": gone, "models": ["object_detection"], "webhookUrl": hooks})
        assert response.status_code == 202, response.text
        image_id = response.json()["id"]
        group = httpx.post(f"http://127.0.0.1:{port}/v1/groups", headers=auth,
                           json={"images": [{"url": gone}], "models": ["object_detection"], "webhookUrl": hooks})
        assert group.status_code == 202, group.text
        group_id = group.json()["id"]
        queued = output.wait_json(rf'"image {image_id} queued"', 30)
        assert queued["request_id"] == response.headers["x-request-id"], queued
        assert (queued["org"], queued["image_id"], queued["logger"]) == (org, image_id, "sightwire.api"), queued
        failed = output.wait_json(rf'JobProcessor.*"image {image_id} failed', 60)
        assert (failed["org"], failed["image_id"], failed["code"]) == (org, image_id, "fetch_failed"), failed
        # Each webhook attempt (to a closed port: a failure, logged at INFO) names its delivery by field.
        for field, resource_id in (("image_id", image_id), ("group_id", group_id)):
            line = rf'"sightwire\.notifier", "message": "attempt 1 of dlv_.*"{field}": "{resource_id}"'
            attempt = output.wait_json(line, 60)
            assert attempt["delivery_id"].startswith("dlv_") and attempt["delivery_id"] in attempt["message"], attempt
            assert (attempt["org"], attempt["endpoint_url"]) == (org, hooks), attempt
            assert attempt["endpoint_id"] == endpoint_id(org, hooks), attempt

        redis.stop()
        output.wait_for(r'JobProcessor.*"WARNING", "logger": "sightwire\.processor", "message": "processor \w+: '
                        r'\w*(Connection|Timeout)', 60)
        redis.start()
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)  # its own session: the CLI and the Ray it started
            serve.wait(10)
        redis.cleanup()
    assert serve.returncode == 0, "\n".join(output.lines[-60:])


def test_json_lines_carry_the_extra_fields_and_the_traceback() -> None:
    """Outside a Serve request: no request fields, the ``extra=`` ones and the exception's text."""
    from serve_app.worker_logs import JsonFormatter

    try:
        raise ValueError("bad pixels")
    except ValueError:
        record = logging.getLogger("sightwire.processor").makeRecord(
            "sightwire.processor", logging.WARNING, __file__, 1, "image %s failed", ("img_1",), sys.exc_info(),
            extra={"org": "org_1", "image_id": "img_1"},
        )
    entry = json.loads(JsonFormatter().format(record))
    assert {k: entry[k] for k in ("level", "logger", "message", "org", "image_id")} == {
        "level": "WARNING", "logger": "sightwire.processor", "message": "image img_1 failed",
        "org": "org_1", "image_id": "img_1",
    }
    assert "ValueError: bad pixels" in entry["exc_info"] and "request_id" not in entry
