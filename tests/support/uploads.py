"""A streaming HTTP/1.1 upload over a plain socket that reads the reply while it sends.

That is what curl and browsers do, and what a test of an early 413 needs: a server that stops
reading answers and closes while the client is still sending. Clients that finish sending before
they read (httpx, requests) see the connection reset instead of the answer.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass
from typing import Any


@dataclass
class UploadReply:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int  # request body bytes the client handed to the network before the server stopped it

    def json(self) -> Any:
        return json.loads(self.body)


def parse_reply(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    return int(status_line.split(" ")[1]), headers, body[: int(length)] if length else body


def chunked_upload(
    host: str, port: int, path: str, headers: dict[str, str], total: int, chunk_size: int = 65_536,
    timeout_s: float = 60.0,
) -> UploadReply:
    """POST ``total`` bytes with ``Transfer-Encoding: chunked``; stop sending if the server hangs up."""
    chunk = b"x" * chunk_size
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    request = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Transfer-Encoding: chunked", "Connection: close"]
    request += [f"{name}: {value}" for name, value in headers.items()]
    received = bytearray()
    with socket.create_connection((host, port), timeout=timeout_s) as sock:

        def read() -> None:
            try:
                while data := sock.recv(65_536):
                    received.extend(data)
            except OSError:  # reset after the reply: what was read stays read
                pass

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        sent = 0
        try:
            sock.sendall(("\r\n".join(request) + "\r\n\r\n").encode())
            while sent < total:
                sock.sendall(frame)
                sent += len(chunk)
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server closed the connection: stop sending
            pass
        reader.join(timeout_s)
    if not received:
        raise AssertionError(f"no reply after sending {sent} bytes")
    status, reply_headers, body = parse_reply(bytes(received))
    return UploadReply(status, reply_headers, body, sent)
