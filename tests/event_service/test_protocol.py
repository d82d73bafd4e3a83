"""Wire protocol parsing and encoding without sockets."""

import json

import pytest

from kilo_web.event_service import protocol
from kilo_web.event_service.protocol import ErrorCode, ProtocolError


def test_parse_subscribe_dedupes_contexts():
    frame = protocol.parse_client_frame('{"type":"context.subscribe","contexts":["/a","/a","/b"]}')
    assert frame == protocol.Subscribe(contexts=("/a", "/b"))


def test_parse_unsubscribe():
    frame = protocol.parse_client_frame('{"type":"context.unsubscribe","contexts":[]}')
    assert frame == protocol.Unsubscribe(contexts=())


@pytest.mark.parametrize(
    "text, code",
    [
        ("", ErrorCode.INVALID_JSON),
        (b"{}", ErrorCode.BINARY_FRAME),
        ("42", ErrorCode.INVALID_FRAME),
        ('{"type": 7}', ErrorCode.INVALID_FRAME),
        ('{"type": "hello"}', ErrorCode.UNKNOWN_TYPE),
        ('{"type": "context.subscribe", "contexts": {"a": 1}}', ErrorCode.INVALID_FRAME),
        ('{"type": "context.subscribe", "contexts": ["/a b"]}', ErrorCode.INVALID_CONTEXT),
        ('{"type": "context.subscribe", "contexts": ["/a//b"]}', ErrorCode.INVALID_CONTEXT),
    ],
)
def test_parse_rejects_with_code(text, code):
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_client_frame(text)
    assert caught.value.code is code


def test_unknown_type_message_names_value_and_choices():
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_client_frame('{"type": "context.publish"}')
    assert "'context.publish'" in caught.value.message
    assert "context.subscribe" in caught.value.message


def test_encode_event_round_trip():
    event = protocol.Event(context="/kiloclaw/s1", event="message.created", data={"id": "m1"})
    text = protocol.encode(event)
    assert json.loads(text) == {
        "type": "event", "context": "/kiloclaw/s1", "event": "message.created", "data": {"id": "m1"},
    }
    assert protocol.parse_server_frame(text) == event


def test_encode_error_drops_none_fields():
    error = protocol.error_frame(ProtocolError(ErrorCode.INVALID_JSON, "bad"))
    assert json.loads(protocol.encode(error)) == {
        "type": "error", "code": "invalid_json", "message": "bad",
    }


def test_forbidden_error_round_trips_contexts():
    error = protocol.Error(code="forbidden", message="no", frame_type="context.subscribe",
                           contexts=("/kiloclaw/s1/c1",))

    text = protocol.encode(error)

    assert json.loads(text)["contexts"] == ["/kiloclaw/s1/c1"]
    assert protocol.parse_server_frame(text) == error


def test_parse_error_ignores_malformed_contexts():
    text = '{"type": "error", "code": "forbidden", "message": "no", "contexts": [1]}'

    assert protocol.parse_server_frame(text).contexts is None


def test_parse_server_frame_rejects_bad_event():
    with pytest.raises(ProtocolError):
        protocol.parse_server_frame('{"type": "event", "context": 1, "event": "x"}')
