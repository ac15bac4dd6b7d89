"""The worker's side of the protocol: golden messages from the TypeScript definition
decode and validate; forged, replayed, off-schema and non-msgpack messages are dropped."""
import json
import math
import os
from pathlib import Path

import msgpack
import pytest
import zmq

from kotara_worker import protocol

GOLDEN = Path(__file__).resolve().parents[2] / "protocol" / "golden"
KEY = os.urandom(32)
TO_WORKER = {"load", "evaluate", "evaluate_resume", "evaluate_positions", "evaluate_share", "generate", "fit", "cancel", "shutdown"}


def golden_names():
    return sorted(p.stem for p in GOLDEN.glob("*.msgpack"))


def test_golden_set_is_complete():
    assert set(golden_names()) >= TO_WORKER | {"hello", "loaded", "progress", "result", "chunk", "generated", "fitted", "error", "bye", "heartbeat", "status"}


@pytest.mark.parametrize("name", golden_names())
def test_golden_message_decodes_and_validates(name):
    body = (GOLDEN / f"{name}.msgpack").read_bytes()
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    direction = "to_worker" if name in TO_WORKER else "from_worker"
    message = protocol.decode([body, protocol.sign(KEY, body)], KEY, direction)
    assert message == expected
    assert protocol.schema_errors(message, direction) == []


def signed(message):
    body = msgpack.packb(message, use_bin_type=True)
    return [body, protocol.sign(KEY, body)]


def evaluate_message():
    return json.loads((GOLDEN / "evaluate.json").read_text())


def test_bad_signature_and_wrong_key_are_refused():
    body, mac = signed(evaluate_message())
    with pytest.raises(protocol.ProtocolError, match="signature"):
        protocol.decode([body, mac[:-1] + bytes([mac[-1] ^ 1])], KEY)
    with pytest.raises(protocol.ProtocolError, match="signature"):
        protocol.decode([body, mac], os.urandom(32))
    with pytest.raises(protocol.ProtocolError, match="frames"):
        protocol.decode([body], KEY)


def test_tampered_body_is_refused():
    body, mac = signed(evaluate_message())
    tampered = body.replace(b"entropy", b"gapgapg")
    assert tampered != body
    with pytest.raises(protocol.ProtocolError, match="signature"):
        protocol.decode([tampered, mac], KEY)


@pytest.mark.parametrize("mutate, field", [
    (lambda m: m["settings"][0].__setitem__("temperatures", [0, 1]), "settings.0.temperatures.0"),
    (lambda m: m["settings"][0].__setitem__("type", "median"), "settings.0.type"),
    (lambda m: m.__setitem__("surprise", 1), "(message)"),
    (lambda m: m["dataset"].__setitem__("stride", -4), "dataset.stride"),
])
def test_off_schema_messages_are_refused_with_the_field(mutate, field):
    m = evaluate_message()
    mutate(m)
    with pytest.raises(protocol.ProtocolError, match="off-schema"):
        protocol.decode(signed(m), KEY)
    assert any(line.startswith(field) for line in protocol.schema_errors(m, "to_worker"))


def test_msgpack_ext_types_are_refused():
    # Only plain msgpack crosses the bridge: an ext type (the door pickle-like payloads use) is dropped.
    body = msgpack.packb({"type": "shutdown", "seq": 1, "x": msgpack.ExtType(42, b"payload")})
    with pytest.raises(protocol.ProtocolError, match="undecodable"):
        protocol.decode([body, protocol.sign(KEY, body)], KEY)


def test_channel_drops_replays_and_forgeries():
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://kotara-test")
    b.connect("inproc://kotara-test")
    dropped = []
    channel = protocol.Channel(b, KEY, log=dropped.append)
    first = signed({"type": "shutdown", "seq": 5})
    a.send_multipart(first)
    assert channel.recv(1000) == {"type": "shutdown", "seq": 5}
    a.send_multipart(first)  # the same frames again: a replay
    assert channel.recv(200) is None
    a.send_multipart(signed({"type": "shutdown", "seq": 3}))  # an older seq
    assert channel.recv(200) is None
    forged = msgpack.packb({"type": "shutdown", "seq": 9})
    a.send_multipart([forged, protocol.sign(os.urandom(32), forged)])
    assert channel.recv(200) is None
    a.send_multipart(signed({"type": "shutdown", "seq": 6}))
    assert channel.recv(1000) == {"type": "shutdown", "seq": 6}
    assert len(dropped) == 3 and "replayed" in dropped[0] and "signature" in dropped[2]
    a.close(0)
    b.close(0)


def test_golden_sums_list_their_windows_and_add_up():
    from kotara_worker.evaluate import Sums
    for name in ("evaluate_resume", "progress", "result", "result_bytes"):
        message = json.loads((GOLDEN / f"{name}.json").read_text())
        sums = message["resume"] if name == "evaluate_resume" else message["sums"]
        first, done = sums["window_first"], sums["windows_done"]
        assert (first == 0) == (name != "progress")           # a progress message: the newest windows only
        assert len(sums["window_targets"]) == len(sums["window_bytes"]) == done - first
        if first == 0:
            assert sum(sums["window_targets"]) == sums["scored_tokens"]
            for totals, lists in ((sums["model_nll"], sums["window_model_nll"]),
                                  (sums["fusion_nll"], sums["window_fusion_nll"])):
                assert [math.fsum(r) for r in lists] == totals
            assert Sums.from_dict(sums).to_dict() == sums     # the worker reads a resume as it was sent
    byte_sums = json.loads((GOLDEN / "result_bytes.json").read_text())["sums"]
    assert byte_sums["window_bytes"] == byte_sums["window_targets"]    # byte space: the scored bytes
