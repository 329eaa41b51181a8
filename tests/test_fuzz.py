"""Hostile input, generated from the protocol's own types (Hypothesis): every malformed client event gets an
`error` event naming the field it got wrong, every malformed speech request a 4xx naming its field; never a
`server_error` or a 500; and the same session then completes a normal spoken turn (#10)."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
from agent_server import echo_services, running_server, ws_url
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from speech import pad, synthesize
from websockets.sync.client import connect

from higgs_agent.audio import float_to_pcm16
from higgs_agent.protocol import client_events as ce
from higgs_agent.protocol.session_fields import SessionField
from higgs_agent.server import WS_MAX_BYTES
from higgs_agent.transport.speech_http import SpeechRequest

pytestmark = pytest.mark.timeout(600)
EXAMPLES = 150  # per property: two event properties and one HTTP property make 450 malformed inputs


def schema_words(model: type[BaseModel], seen: set | None = None) -> set[str]:
    """Every field name and literal in a model and the models it holds: keys a hostile client would use."""
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    words = set(model.model_fields)
    for field in model.model_fields.values():
        for arg in _flatten(field.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                words |= schema_words(arg, seen)
            elif isinstance(arg, str):
                words.add(arg)
    return words


def _flatten(annotation) -> list:  # noqa: ANN001 - a typing annotation
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    return [leaf for arg in args for leaf in _flatten(arg)]


WORDS = sorted(schema_words(SessionField) | {w for m in ce._EVENT_MODELS for w in schema_words(m)}
               | schema_words(SpeechRequest))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=12), st.sampled_from(WORDS))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.sampled_from(WORDS), inner, max_size=5)),
                    max_leaves=12)
BASES = {  # a valid event of each type; one field is then replaced by something hostile
    "session.update": {"session": {}}, "input_audio_buffer.append": {"audio": ""},
    "conversation.item.create": {"item": {"type": "message", "role": "user",
                                          "content": [{"type": "input_text", "text": "hi"}]}},
    "conversation.item.truncate": {"item_id": "x", "content_index": 0, "audio_end_ms": 0},
    "conversation.item.delete": {"item_id": "x"}, "conversation.item.retrieve": {"item_id": "x"},
    "response.create": {"response": {}}, "response.cancel": {},
}
FIELDS = {kind: [f for f in model.model_fields if f not in ("type", "event_id")]
          for kind, model in ((m.model_fields["type"].annotation.__args__[0], m) for m in ce._EVENT_MODELS)}


def event_is_valid(event: dict) -> bool:
    try:
        parsed = ce.parse_client_event(json.dumps(event), 1 << 20)
        if parsed.type == "session.update":
            SessionField.model_validate(parsed.session)
    except Exception:  # noqa: BLE001 - any refusal counts as invalid here
        return False
    return True


@pytest.fixture(scope="module")
def server(bundle, transcriber):
    services = echo_services(bundle, transcriber)
    with running_server(services) as base:
        yield base, services


@pytest.fixture(scope="module")
def session(server):
    """One session for every generated event: the fuzz must not break it."""
    with connect(ws_url(server[0]), max_size=WS_MAX_BYTES) as socket:
        assert json.loads(socket.recv(timeout=30))["type"] == "session.created"
        yield socket


def answer(socket, event: dict | str) -> dict:  # noqa: ANN001
    socket.send(event if isinstance(event, str) else json.dumps(event))
    while True:
        reply = json.loads(socket.recv(timeout=30))
        if reply["type"] in ("error", "session.updated"):
            return reply


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(sorted(k for k in FIELDS if FIELDS[k])), data=st.data())
def test_a_malformed_field_of_any_event_is_an_error_naming_it(session, kind, data):
    field = data.draw(st.sampled_from(FIELDS[kind]))
    event = {"type": kind, **json.loads(json.dumps(BASES.get(kind, {}))), field: data.draw(JSON)}
    assume(not event_is_valid(event))
    reply = answer(session, event)
    assert reply["type"] == "error", reply
    error = reply["error"]
    assert error["type"] == "invalid_request_error" and error["code"] != "server_error", error
    assert error["code"] == "invalid_value" and (error["param"] or "").split(".")[0] == field, error


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(sorted(SessionField.model_fields)), value=JSON)
def test_a_malformed_session_field_is_an_error_naming_its_path(session, field, value):
    event = {"type": "session.update", "session": {field: value}}
    assume(not event_is_valid(event))
    reply = answer(session, event)
    assert reply["type"] == "error", reply
    error = reply["error"]
    assert error["code"] == "invalid_value" and error["param"].startswith(f"session.{field}"), error


GARBAGE = st.one_of(st.text(max_size=40), st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
                    JSON.map(json.dumps))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(message=GARBAGE)
def test_garbage_is_an_error_event_too(session, message):
    try:
        data = json.loads(message)
    except ValueError:
        data = None
    assume(not (isinstance(data, dict) and event_is_valid(data)))
    reply = answer(session, message)
    assert reply["type"] == "error" and reply["error"]["code"] in (
        "invalid_json", "invalid_event", "unknown_event", "invalid_value"), reply


SPEECH_FIELDS = sorted(f for f in SpeechRequest.model_fields if f != "input")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(SPEECH_FIELDS + ["input"]), value=JSON)
def test_a_malformed_speech_request_is_a_4xx_naming_the_field(server, field, value):
    body = {"input": "Hi.", "response_format": "pcm", "max_frames": 5, field: value}
    try:
        SpeechRequest.model_validate(body)
        assume(False)  # a valid request: not what this property is about
    except ValidationError:
        pass
    response = httpx.post(f"{server[0]}/v1/audio/speech", json=body, timeout=60)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["param"].split(".")[0] == field and error["type"] == "invalid_request_error", error


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.binary(max_size=200))
def test_any_bytes_as_a_speech_body_are_a_4xx(server, body):
    try:
        data = json.loads(body)
        SpeechRequest.model_validate(data)
        assume(False)
    except (ValueError, TypeError):
        pass
    response = httpx.post(f"{server[0]}/v1/audio/speech", content=body, timeout=60)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_python_json_extensions_are_refused_not_taken_as_floats(server, session, constant):
    """`{"temperature": NaN}` parses in Python but in no browser; a number nothing downstream can use."""
    reply = answer(session, '{"type": "session.update", "session": {"temperature": %s}}' % constant)
    assert reply["type"] == "error" and reply["error"]["code"] == "invalid_json", reply
    assert constant in reply["error"]["message"]
    response = httpx.post(f"{server[0]}/v1/audio/speech", content='{"input": "Hi.", "speed": %s}' % constant,
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json", response.text


def test_after_all_that_the_same_session_takes_a_spoken_turn(server, session):
    speech, _ = synthesize("hello, can you tell me the weather forecast for tomorrow", sample_rate=24000)
    audio = float_to_pcm16(pad(speech, 24000, lead_ms=300, tail_ms=1500))
    for start in range(0, len(audio), 9600):
        session.send(json.dumps({"type": "input_audio_buffer.append",
                                 "audio": base64.b64encode(audio[start:start + 9600]).decode()}))
    while True:
        event = json.loads(session.recv(timeout=120))
        if event["type"] == "response.done":
            break
    assert event["response"]["status"] == "completed"
    _, services = server
    errors = services.metrics.errors.collect()[0].samples
    assert not [s for s in errors if s.labels.get("code") == "server_error" and s.value > 0]
    assert np.isfinite(services.metrics.sessions_active._value.get())
