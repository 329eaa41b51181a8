"""The whole agent in one process (#24): `higgs-agent serve --model DIR --reply-model DIR`, a real subprocess
whose replies come from a tiny Llama loaded beside the speech model. A spoken question, a function call the
client runs, and a spoken answer from the function's output, over the Realtime WebSocket."""

from __future__ import annotations

import json

import pytest
from agent_server import Client
from speech import pad, synthesize

from higgs_agent.model.tiny_reply import TRAINED_INSTRUCTIONS, WEATHER_ANSWER, WEATHER_OUTPUT, WEATHER_TOOL
from higgs_agent.model.tiny_reply import make_tiny_reply_model
from higgs_agent.testing.serve_process import running_serve

pytestmark = pytest.mark.timeout(420)


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    reply_dir = make_tiny_reply_model(tmp_path_factory.mktemp("tiny-reply"))
    with running_serve(["--model", str(tiny_dir), "--reply-model", str(reply_dir), "--greedy",
                        "--max-frames", "60", "--no-understanding"]) as serve:
        yield serve


def of(client: Client, kind: str) -> list[dict]:
    return [e for e in client.events if e["type"] == kind]


async def test_a_spoken_question_a_tool_call_and_a_spoken_answer(server):
    assert "responders: echo, local, default local" in server.log()
    client = await Client.connect(server.base)
    await client.send({"type": "session.update", "session": {
        "instructions": TRAINED_INSTRUCTIONS[0], "tools": [WEATHER_TOOL], "tool_choice": "auto",
        "audio": {"input": {"turn_detection": None}}}})
    await client.until("session.updated")
    audio, rate = synthesize("What's the weather in Paris?", sample_rate=24_000)
    await client.send_audio(pad(audio, rate), rate=rate)
    await client.send({"type": "input_audio_buffer.commit"})
    await client.send({"type": "response.create"})
    transcript = await client.until("conversation.item.input_audio_transcription.completed")
    done = await client.until("response.done")
    heard = transcript["transcript"].lower()
    assert "weather" in heard and "paris" in heard, heard

    call = done["response"]["output"][-1]
    assert call["type"] == "function_call" and call["name"] == "get_weather", done["response"]
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    arguments_done = of(client, "response.function_call_arguments.done")[-1]
    assert arguments_done["call_id"] == call["call_id"] and arguments_done["arguments"] == call["arguments"]

    await client.send({"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": call["call_id"], "output": WEATHER_OUTPUT}})
    await client.send({"type": "response.create"})
    answer = await client.until("response.done")
    await client.close()
    assert answer["response"]["status"] == "completed"
    assert answer["response"]["output"][0]["content"][0]["transcript"] == WEATHER_ANSWER
    assert len(client.reply_audio(answer["response"]["id"])) > 24_000  # the answer was spoken
