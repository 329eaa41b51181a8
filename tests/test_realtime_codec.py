"""The Realtime codec's outbound half on its own: the session's domain events become exactly the wire events a
client written against OpenAI's SDK reads (each checked against openai-python's models), in the order the
protocol sets, and our `higgs.*` events reach only a session that opted in. Sessions driven end to end (tests
/test_session.py, the transports' tests) hold the same events in context."""

from __future__ import annotations

import json

import pytest
from third_party import server_event_shape_errors

from higgs_agent.agent import events as ev
from higgs_agent.agent.config import SessionConfig
from higgs_agent.agent.conversation import ConversationItem, SpokenPhrase, ToolCall
from higgs_agent.agent.tools.spec import ToolConfig
from higgs_agent.transport.realtime_codec import RealtimeEncoder

PLACE = ev.Place("resp_1", "item_a", 0)


def wire(encoder: RealtimeEncoder, event: ev.DomainEvent) -> list[dict]:
    out = [json.loads(text) for text in encoder.texts(event)]
    for message in out:
        if not message["type"].startswith("higgs."):
            assert server_event_shape_errors(message) == [], message
    return out


def opened(encoder: RealtimeEncoder, extensions: bool) -> None:
    wire(encoder, ev.SessionOpened(SessionConfig("higgs-audio-v2", extension_events=extensions), ToolConfig()))


def spoken_item() -> ConversationItem:
    item = ConversationItem("item_a", "assistant", "output_audio", text="Hello there.", status="completed")
    item.phrases.append(SpokenPhrase("Hello there.", 0.0, 900.0))
    return item


def test_a_reply_is_told_in_the_protocols_order_and_shapes():
    encoder = RealtimeEncoder()
    opened(encoder, extensions=False)
    item = spoken_item()
    state = ev.ReplyState("resp_1", "completed", items=(item,), usage=ev.Usage(3, 50, 2, 25), metadata={"k": "v"})
    told = [message for event in (
        ev.ReplyStarted(ev.ReplyState("resp_1", "in_progress")),
        ev.ReplyItemAdded(PLACE, item, "item_user"),
        ev.ReplyMessageOpened(PLACE, spoken=True),
        ev.ReplyWords(PLACE, "Hello there.", spoken=True),
        ev.ReplyMessageClosed(PLACE, "Hello there.", spoken=True),
        ev.ReplyItemDone(PLACE, item, "item_user"),
        ev.ReplyFinished("resp_1", "completed", "item_a", "Hello there.", state),
    ) for message in wire(encoder, event)]
    assert [m["type"] for m in told] == [
        "response.created", "response.output_item.added", "conversation.item.added", "response.content_part.added",
        "response.output_audio_transcript.delta", "response.output_audio.done",
        "response.output_audio_transcript.done", "response.content_part.done", "response.output_item.done",
        "conversation.item.done", "response.done"]
    done = told[-1]["response"]
    assert done["status"] == "completed" and done["status_details"] is None and done["metadata"] == {"k": "v"}
    assert done["output"][0]["content"][0] == {"type": "output_audio", "transcript": "Hello there."}
    assert done["usage"]["input_token_details"] == {"text_tokens": 3, "audio_tokens": 50, "cached_tokens": 0}
    assert told[2]["previous_item_id"] == "item_user" and told[1]["output_index"] == 0


@pytest.mark.parametrize(("status", "reason", "failure", "details"), [
    ("cancelled", "turn_detected", None, {"type": "cancelled", "reason": "turn_detected", "error": None}),
    ("incomplete", "max_output_tokens", None, {"type": "incomplete", "reason": "max_output_tokens", "error": None}),
    ("failed", None, ev.Failure("at_capacity", "at capacity: all 2 slots busy"),
     {"type": "failed", "reason": None,
      "error": {"type": "server_error", "code": "at_capacity", "message": "at capacity: all 2 slots busy"}}),
])
def test_how_a_response_ended_is_in_its_status_details(status, reason, failure, details):
    state = ev.ReplyState("resp_1", status, reason, failure)
    [done] = wire(RealtimeEncoder(), ev.ReplyFinished("resp_1", status, None, "", state))
    assert done["response"]["status"] == status and done["response"]["status_details"] == details


def test_our_events_reach_only_a_session_that_asked_for_them():
    timed = ev.TurnTimed("resp_1", "item_user", "item_a", {"transcript": 120.0, "first_audio_sent": 410.0})
    encoder = RealtimeEncoder()
    opened(encoder, extensions=False)
    assert wire(encoder, timed) == []
    wire(encoder, ev.SessionChanged(SessionConfig("higgs-audio-v2", extension_events=True), ToolConfig()))
    [latency] = wire(encoder, timed)
    assert latency["type"] == "higgs.turn.latency" and latency["latency_ms"]["first_audio_sent"] == 410.0
    assert latency["item_id"] == "item_user" and latency["response_id"] == "resp_1"


def test_a_function_call_and_an_mcp_call_say_their_arguments_each_their_own_way():
    encoder = RealtimeEncoder()
    function = ConversationItem.tool("item_f", "function_call", ToolCall("call_1", "get_weather", '{"city": "Oslo"}'))
    mcp = ConversationItem.tool("item_m", "mcp_call", ToolCall("call_2", "lookup", "{}", server_label="docs"))
    f_place, m_place = ev.Place("resp_1", "item_f", 0), ev.Place("resp_1", "item_m", 1)
    [delta] = wire(encoder, ev.CallArgumentsGrew(f_place, function, '{"city"'))
    [done] = wire(encoder, ev.CallArgumentsDone(f_place, function))
    assert delta["type"] == "response.function_call_arguments.delta" and delta["call_id"] == "call_1"
    assert done["type"] == "response.function_call_arguments.done" and done["name"] == "get_weather"
    assert json.loads(done["arguments"]) == {"city": "Oslo"}
    [mcp_done] = wire(encoder, ev.CallArgumentsDone(m_place, mcp))
    [running] = wire(encoder, ev.McpCallRunning(m_place, "failed"))
    assert mcp_done["type"] == "response.mcp_call_arguments.done" and "call_id" not in mcp_done
    assert running == {"type": "response.mcp_call.failed", "event_id": running["event_id"], "item_id": "item_m",
                       "output_index": 1}


def test_facts_for_observers_only_have_no_wire_form():
    encoder = RealtimeEncoder()
    assert wire(encoder, ev.PauseJudged("item_u", 1, 900, 0.8, "closed", "I am done.", complete=True)) == []
    assert wire(encoder, ev.InterruptionJudged("item_u", interrupted=False)) == []
