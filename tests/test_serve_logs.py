"""``sightwire serve`` shows the processor's, the notifier's and the models' log lines in its terminal.

The command runs as a child process (its own local Ray) with one tiny model and a private Redis.
Once ready, its output must hold the model replica's and the notifier's INFO lines (each
prefixed by Ray with the process it came from) and say where the log folder is; then Redis is
stopped for a moment, and the processor's warning about it must appear too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

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


def test_sightwire_serve_shows_processor_notifier_and_model_logs(tmp_path: Path, tiny_models_dir: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY.format(models_dir=tiny_models_dir))
    redis = RedisServer(tmp_path / "redis").start()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(ROOT), REDIS_URL=redis.url, SIGHTWIRE_KEY_PREFIX="swlogs",
               SIGHTWIRE_DATA_DIR=str(tmp_path / "data"), SIGHTWIRE_MODELS_DIR=str(tiny_models_dir),
               PYTHONUNBUFFERED="1")
    serve = subprocess.Popen(
        [sys.executable, "-m", "serve_app.cli", "serve", "--port", str(free_port()), "--models", str(registry)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    output = Output(serve)
    try:
        output.wait_for(r"^Sightwire ready on ", 240)
        output.wait_for(r"object_detection.*sightwire\.models: .* loaded on cpu", 60)
        output.wait_for(r"Notifier.*sightwire\.notifier: notifier loop started", 60)
        logs_line = output.wait_for(r"^logs: ", 5)
        logs_dir = Path(re.search(r"in (\S+) \(Serve", logs_line).group(1))
        assert (logs_dir / "serve").is_dir(), logs_line

        redis.stop()
        output.wait_for(r"JobProcessor.*WARNING sightwire\.processor: processor \w+: \w*(Connection|Timeout)", 60)
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
