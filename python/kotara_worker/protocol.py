"""The worker's side of the wire protocol defined in src/protocol.ts.

Every message is two ZeroMQ frames: msgpack(body) and HMAC-SHA256(key, body). The
schema the worker checks against is protocol/schema.json, generated from the
TypeScript definition; nothing here restates the message shapes.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
from jsonschema import Draft202012Validator

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "protocol" / "schema.json"


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


SCHEMA = load_schema()
PROTOCOL_VERSION: int = SCHEMA["protocol_version"]


def _by_type(union: dict) -> dict[str, Draft202012Validator]:
    """One validator per message type: the branches of the generated oneOf, keyed by `type`."""
    return {branch["properties"]["type"]["const"]: Draft202012Validator(branch) for branch in union["oneOf"]}


_VALIDATORS = {"to_worker": _by_type(SCHEMA["to_worker"]), "from_worker": _by_type(SCHEMA["from_worker"])}


class ProtocolError(Exception):
    """A message that must be dropped: bad signature, replay, undecodable or off-schema."""


class RequestError(Exception):
    """A request the worker cannot serve (a model that does not load, a text it cannot read,
    a context too short, …), answered with an error message: code ∈ protocol ErrorMsg codes
    (not_found | tokenizer_mismatch | remote_code | context | bad_request | …)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def sign(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


def encode(message: dict, key: bytes) -> list[bytes]:
    body = msgpack.packb(message, use_bin_type=True)
    return [body, sign(key, body)]


def schema_errors(message: Any, direction: str) -> list[str]:
    """`path: message` lines for a message off the schema (direction: to_worker | from_worker)."""
    validators = _VALIDATORS[direction]
    kind = message.get("type") if isinstance(message, dict) else None
    if kind not in validators:
        return [f"type: must be one of {', '.join(sorted(validators))}, got {kind!r}"]
    errors = sorted(validators[kind].iter_errors(message), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(message)'}: {e.message}" for e in errors]


def decode(frames: list[bytes], key: bytes, direction: str = "to_worker") -> dict:
    """Verify, unpack and validate one message; raises ProtocolError to drop it."""
    if len(frames) != 2:
        raise ProtocolError(f"expected 2 frames (body, mac), got {len(frames)}")
    body, mac = frames
    if not hmac.compare_digest(sign(key, body), mac):
        raise ProtocolError("bad signature")
    try:
        # msgpack only: no ext types, so nothing but plain data can come out of this.
        message = msgpack.unpackb(body, raw=False, strict_map_key=True, ext_hook=_no_ext)
    except Exception as e:  # noqa: BLE001 - any decoding failure means drop
        raise ProtocolError(f"undecodable body: {e}") from None
    problems = schema_errors(message, direction)
    if problems:
        raise ProtocolError("off-schema message: " + "; ".join(problems[:5]))
    return message


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")


class Channel:
    """One authenticated, replay-protected conversation over a DEALER socket.

    The socket is shared by the main thread and the heartbeat thread, so every
    socket call goes through one lock (ZeroMQ sockets are not thread-safe).

    With `peer` (a routing identity) the socket is a ROUTER that may hear several
    peers (a listening worker, listen.py): frames then carry the identity first, and
    what comes from any other identity goes to `stranger` instead.
    """

    def __init__(self, socket, key: bytes, log=print, peer: bytes | None = None):
        self.socket = socket
        self.key = key
        self.log = log
        self.peer = peer
        self.lock = threading.Lock()
        self.send_seq = 0
        self.last_recv_seq = -1

    def send(self, message: dict) -> None:
        with self.lock:
            message = {**message, "seq": self.send_seq}
            self.send_seq += 1
            frames = encode(message, self.key)
            self.socket.send_multipart(frames if self.peer is None else [self.peer, *frames], copy=False)

    def stranger(self, frames: list[bytes]) -> None:
        self.log("kotara-worker: dropped a message from another peer")

    def recv(self, timeout_ms: int) -> dict | None:
        """The next valid message, or None after timeout_ms. Invalid ones are dropped (and logged)."""
        import zmq

        # Poll in short slices so the heartbeat thread never waits long for the lock.
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            with self.lock:
                if self.socket.poll(min(20, timeout_ms), zmq.POLLIN):
                    frames = self.socket.recv_multipart()
                    break
            if time.monotonic() >= deadline:
                return None
        if self.peer is not None:
            if frames[0] != self.peer:
                self.stranger(frames)
                return None
            frames = frames[1:]
        try:
            message = decode(frames, self.key)
        except ProtocolError as e:
            self.log(f"kotara-worker: dropped a message: {e}")
            return None
        if message["seq"] <= self.last_recv_seq:
            self.log(f"kotara-worker: dropped a replayed message (seq {message['seq']} after {self.last_recv_seq})")
            return None
        self.last_recv_seq = message["seq"]
        return message
