"""The client frame decoder under generated input: a frame or a documented error, nothing else.

Three generators, 10,000 inputs in all: raw text and bytes, arbitrary JSON
values, and frames shaped like the real ones with wrong or hostile fields.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kilo_web.event_service import protocol
from kilo_web.event_service.contexts import MAX_CONTEXT_LENGTH

FUZZ = settings(max_examples=3_400, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=10,
)

contexts = st.one_of(
    st.text(max_size=300),
    st.from_regex(r"(/[A-Za-z0-9_.:@-]{1,64}){1,9}", fullmatch=True),
    st.just("/" + "a" * MAX_CONTEXT_LENGTH),
)

shaped_frames = st.fixed_dictionaries(
    {"type": st.sampled_from(["context.subscribe", "context.unsubscribe", "auth.refresh"])
     | st.text(max_size=80) | json_values},
    optional={
        "contexts": st.lists(contexts, max_size=120) | json_values,
        "since": st.dictionaries(contexts, st.fixed_dictionaries(
            {"stream": st.text(max_size=40) | json_values, "seq": st.integers() | json_values}),
            max_size=5) | json_values,
        "token": st.text(max_size=5_000) | json_values,
    },
)


def check(raw: str | bytes) -> None:
    """Parse ``raw``; a frame must be well typed and an error must carry a documented code."""
    try:
        frame = protocol.parse_client_frame(raw)
    except protocol.ProtocolError as error:
        assert isinstance(error.code, protocol.ErrorCode)
        assert error.message
        encoded = json.loads(protocol.encode(protocol.error_frame(error)))
        assert encoded["type"] == "error"
        assert encoded["code"] in {code.value for code in protocol.ErrorCode}
        return
    assert isinstance(frame, (protocol.Subscribe, protocol.Unsubscribe, protocol.AuthRefresh))
    if isinstance(frame, (protocol.Subscribe, protocol.Unsubscribe)):
        # An empty list is a valid no-op.
        assert len(frame.contexts) <= protocol.MAX_CONTEXTS_PER_FRAME
        assert all(isinstance(c, str) and len(c) <= MAX_CONTEXT_LENGTH for c in frame.contexts)


@FUZZ
@given(st.text() | st.binary())
def test_decoder_raw_input(raw):
    check(raw)


@FUZZ
@given(json_values)
def test_decoder_any_json(value):
    check(json.dumps(value))


@FUZZ
@given(shaped_frames)
def test_decoder_frames_with_hostile_fields(frame):
    check(json.dumps(frame))
