"""The listening worker (`python -m kotara_worker --listen`, listen.py) over real TCP on
loopback: CURVE keeps out a client without the key file's keys (it hears nothing, and
the listener keeps serving), a right client gets a signed hello, a shutdown ends its
session (bye) and the next controller gets a fresh one; a controller that goes away
ends its session too. Deadlines here only guard against a hang: nothing is timed."""
from __future__ import annotations

import json
import os
import signal
import socket as pysocket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from kotara_worker import protocol
from kotara_worker.listen import read_key_file, KeyFileError

from conftest import PYTHON

GUARD_S = 120        # failure guard: the listener imports torch before it binds
SILENCE_MS = 1500    # how long a refused client listens (it never hears anything; no timing is asserted)


def keygen(path: Path) -> dict:
    """A key file as `kotara keygen` writes it (src/keys.ts)."""
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    doc = {"kotara_key": 1, "server_public": server_public.decode(), "server_secret": server_secret.decode(),
           "client_public": client_public.decode(), "client_secret": client_secret.decode(), "hmac": os.urandom(32).hex()}
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    return doc


def free_port() -> int:
    with pysocket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Listener:
    """The listener in a subprocess; its stderr lines collected by a thread."""

    def __init__(self, key_file: Path, *extra: str):
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        env = {**os.environ, "PYTHONPATH": str(PYTHON)}
        self.proc = subprocess.Popen([sys.executable, "-m", "kotara_worker", "--listen", self.endpoint,
                                      "--key-file", str(key_file), "--heartbeat", "0.2", *extra],
                                     stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for("listening on")

    def _read(self) -> None:
        assert self.proc.stderr
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, count: int = 1) -> None:
        end = time.monotonic() + GUARD_S
        while sum(text in line for line in self.lines) < count:
            assert self.proc.poll() is None or any(text in line for line in self.lines), "\n".join(self.lines)
            assert time.monotonic() < end, f"no {text!r} in:\n" + "\n".join(self.lines)
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=GUARD_S)


class Client:
    """A controller's DEALER: CURVE client keys, probe_router (its connect says who it is)."""

    def __init__(self, ctx: zmq.Context, endpoint: str, keys: dict, server_public: str | None = None):
        self.key = bytes.fromhex(keys["hmac"])
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.curve_serverkey = (server_public or keys["server_public"]).encode()
        self.sock.curve_publickey = keys["client_public"].encode()
        self.sock.curve_secretkey = keys["client_secret"].encode()
        self.sock.setsockopt(zmq.PROBE_ROUTER, 1)
        self.sock.connect(endpoint)
        self.seq = 0

    def recv(self, timeout_ms: int) -> dict | None:
        """The next message other than a heartbeat, verified; None if none came in time."""
        end = time.monotonic() + timeout_ms / 1000
        while (left := end - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                return None
            message = protocol.decode(self.sock.recv_multipart(), self.key, "from_worker")
            if message["type"] != "heartbeat":
                return message
        return None

    def send(self, message: dict) -> None:
        self.sock.send_multipart(protocol.encode({**message, "seq": self.seq}, self.key))
        self.seq += 1

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def keys(tmp_path: Path):
    return tmp_path / "lab.key", keygen(tmp_path / "lab.key")


def test_the_right_client_gets_sessions_and_wrong_keys_hear_nothing(tmp_path: Path, keys):
    key_file, right = keys
    other = keygen(tmp_path / "other.key")
    listener = Listener(key_file)
    ctx = zmq.Context()
    try:
        # another keygen's client pair (the right server key): ZAP refuses it
        wrong_client = Client(ctx, listener.endpoint, {**right, "client_public": other["client_public"],
                                                       "client_secret": other["client_secret"]})
        assert wrong_client.recv(SILENCE_MS) is None
        listener.wait_for(f"refused a controller whose key is not the key file's (client key {other['client_public'][:8]}…)")
        # the right client pair, but another server's public key: the handshake cannot complete
        wrong_server = Client(ctx, listener.endpoint, right, server_public=other["server_public"])
        assert wrong_server.recv(SILENCE_MS) is None
        wrong_client.close()
        wrong_server.close()
        assert listener.proc.poll() is None

        for session in (1, 2):   # a fresh session each time: seq from 0, a hello
            c = Client(ctx, listener.endpoint, right)
            hello = c.recv(GUARD_S * 1000)
            assert hello is not None and hello["type"] == "hello" and hello["seq"] == 0, hello
            assert hello["protocol_version"] == protocol.PROTOCOL_VERSION
            c.send({"type": "shutdown"})
            bye = c.recv(GUARD_S * 1000)
            assert bye is not None and bye["type"] == "bye"
            c.close()
            listener.wait_for("session ended", session)
        assert "the controller shut it down" in "\n".join(listener.lines)
        assert sum("session started: controller 127.0.0.1" in line for line in listener.lines) == 2
        assert listener.stop() == 0
        assert listener.lines[-1] == "kotara-worker: stopped (SIGTERM)", listener.lines
    finally:
        if listener.proc.poll() is None:
            listener.proc.kill()
        ctx.destroy(0)


def test_a_controller_that_goes_away_ends_its_session_and_a_busy_listener_drops_others(keys):
    key_file, right = keys
    listener = Listener(key_file)
    ctx = zmq.Context()
    try:
        first = Client(ctx, listener.endpoint, right)
        assert first.recv(GUARD_S * 1000)["type"] == "hello"
        second = Client(ctx, listener.endpoint, right)   # while the first one's session runs
        assert second.recv(SILENCE_MS) is None
        listener.wait_for("dropped a new controller's connection")
        second.close()
        first.close()   # no shutdown: the connection goes
        listener.wait_for("session ended")
        assert "the controller went away" in listener.lines[-1], listener.lines
        third = Client(ctx, listener.endpoint, right)
        assert third.recv(GUARD_S * 1000)["type"] == "hello"
        # Ctrl-C on the listener's side: the controller hears a bye, the listener exits 0
        assert listener.stop(signal.SIGINT) == 0
        assert third.recv(GUARD_S * 1000)["type"] == "bye"
        third.close()
    finally:
        if listener.proc.poll() is None:
            listener.proc.kill()
        ctx.destroy(0)


def run_listen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kotara_worker", "--listen", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(PYTHON)}, timeout=GUARD_S)


def test_no_key_file_and_non_tcp_endpoints_are_refused(tmp_path: Path, keys):
    key_file, _ = keys
    r = run_listen("tcp://127.0.0.1:5555")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "kotara-worker: --listen needs --key-file FILE (made by `kotara keygen FILE`): a listening worker "
        "always requires the key, on any address, loopback included"]
    r = run_listen("ipc:///tmp/w.sock", "--key-file", str(key_file))
    assert r.returncode == 2 and "--listen takes tcp://HOST:PORT" in r.stderr
    r = run_listen("tcp://127.0.0.1:5555", "--key-file", str(tmp_path / "nope.key"))
    assert r.returncode == 2
    assert r.stderr.strip() == f"kotara-worker: {tmp_path / 'nope.key'}: no such file (make one with `kotara keygen " \
                               f"{tmp_path / 'nope.key'}` and copy it to both machines)"


def test_key_file_errors_name_the_file_and_the_field(tmp_path: Path, keys):
    key_file, right = keys
    assert read_key_file(str(key_file)) == (right, None)

    def error(content: str) -> str:
        p = tmp_path / "bad.key"
        p.write_text(content)
        p.chmod(0o600)
        with pytest.raises(KeyFileError) as e:
            read_key_file(str(p))
        return str(e.value).removeprefix(f"{p}: ")

    assert error("{oops").startswith("not a kotara key file (not JSON")
    assert error("[]") == "kotara_key: must be 1 (this is not a key file from `kotara keygen`)"
    assert error(json.dumps({**right, "client_secret": "short"})) == "client_secret: must be a CURVE key in Z85 (40 characters)"
    assert error(json.dumps({**right, "server_public": right["client_public"]})) == \
        "server_public: does not belong to server_secret (was the file edited?)"
    assert error(json.dumps({**right, "hmac": "zz"})) == "hmac: must be 64 hexadecimal digits (32 bytes)"
    key_file.chmod(0o644)
    assert read_key_file(str(key_file))[1] == (f"{key_file}: others than its owner may read it (mode 644); "
                                               f"it holds secret keys: chmod 600 {key_file}")
