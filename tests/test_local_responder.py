"""The `local` responder (#24): an instruct LLM in this process, loaded from a folder the way a real checkpoint
is, writing phrases and tool calls through the same assembly as `llm`; its calls parsed from the model's text;
several sessions' replies batched on one thread; a cancelled reply stopped at once. The spoken end to end,
through a real `serve`: tests/test_local_agent.py."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import replace

import pytest

from higgs_agent.agent.responders.base import ReplyRequest, ResponderError
from higgs_agent.agent.responders.local import IncrementalDecoder, LocalResponder
from higgs_agent.agent.tools.calls import (
    CallAssembler,
    FunctionCallArgumentsDelta,
    FunctionCallDone,
    FunctionCallInvalid,
    FunctionCallStarted,
)
from higgs_agent.agent.tools.spec import ToolChoice, parse_tools
from higgs_agent.agent.tools.text_calls import ToolCallText
from higgs_agent.model.errors import ModelLoadError, ModelNotFoundError, WrongModelTypeError
from higgs_agent.model.reply_model import ReplyGenerator, Sampling, load_reply_model
from higgs_agent.model.tiny_reply import (
    GREETING_ANSWER,
    TRAINED_INSTRUCTIONS,
    WEATHER_ANSWER,
    WEATHER_OUTPUT,
    WEATHER_TOOL,
    chat_tool,
    make_tiny_reply_model,
)

SYSTEM = {"role": "system", "content": TRAINED_INSTRUCTIONS[0]}
QUESTION = {"role": "user", "content": "What's the weather in Paris?"}
TOOLS = parse_tools([WEATHER_TOOL])


@pytest.fixture(scope="module")
def reply_dir(tmp_path_factory):
    return make_tiny_reply_model(tmp_path_factory.mktemp("tiny-reply"))


@pytest.fixture(scope="module")
def reply_model(reply_dir):
    return load_reply_model(str(reply_dir), device="cpu")


@pytest.fixture
def responder(reply_model):
    generator = ReplyGenerator(reply_model, Sampling(greedy=True))
    yield LocalResponder(generator)
    generator.close()


async def collect(responder, request):
    return [event async for event in responder.reply(request)]


# -- calls written as text -----------------------------------------------------------------------------------


def parse(chunks, prefix=""):
    parser = ToolCallText(prefix)
    out = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out + parser.finish()


HERMES = 'Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.mark.parametrize("chunking", ["whole", "by character"])
def test_a_hermes_call_after_words_is_one_piece_however_the_text_is_cut(chunking):
    chunks = [HERMES] if chunking == "whole" else list(HERMES)
    out = parse(chunks)
    assert "".join(item for item in out if isinstance(item, str)) == "Let me check. "
    assert [item for item in out if isinstance(item, dict)] == [
        {"index": 0, "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]


def test_two_calls_in_a_row_and_words_after_them():
    call = '<tool_call>{"name": "a", "arguments": {}}</tool_call>'
    out = parse([call, "\n", call.replace('"a"', '"b"'), " Done."])
    assert [item["function"]["name"] for item in out if isinstance(item, dict)] == ["a", "b"]
    assert [item["index"] for item in out if isinstance(item, dict)] == [0, 1]
    assert out[-1] == " Done."


def test_a_llama3_json_reply_is_a_call_and_other_json_is_words():
    assert parse(['<|python_tag|>{"name": "f", ', '"parameters": {"x": 1}}']) == [
        {"index": 0, "function": {"name": "f", "arguments": '{"x": 1}'}}]
    assert parse(['{"answer": 42}']) == ['{"answer": 42}']


def test_a_partial_tag_that_is_words_after_all_is_spoken():
    assert "".join(parse(["a <tool", "box> b"])) == "a <toolbox> b"


def test_a_call_that_is_not_json_is_reported_invalid_never_passed_on():
    out = parse(['<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>'])
    assembler = CallAssembler(TOOLS)
    events = assembler.piece(out[0]) + assembler.finish()
    assert isinstance(events[-1], FunctionCallInvalid) and "not JSON" in events[-1].error


def test_an_unclosed_call_at_the_end_is_still_a_call_and_a_forced_opening_counts():
    assert parse(['<tool_call>{"name": "x", "arguments": {"q": 1}}']) == [
        {"index": 0, "function": {"name": "x", "arguments": '{"q": 1}'}}]
    assert parse(['"name": "x", "arguments": {}}</tool_call> ok'], prefix='<tool_call>\n{') == [
        {"index": 0, "function": {"name": "x", "arguments": "{}"}}, " ok"]


def test_a_character_split_over_byte_tokens_is_held_until_whole(reply_model):
    tokenizer = reply_model.tokenizer
    ids = tokenizer("café ☀ ok", add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.add(token) for token in ids]
    assert "".join(pieces) + decoder.flush() == "café ☀ ok"
    assert all("\ufffd" not in piece for piece in pieces)


# -- loading ---------------------------------------------------------------------------------------------------


def test_the_tiny_model_is_a_llama_with_a_tool_template_loaded_like_a_checkpoint(reply_dir, reply_model):
    assert (reply_dir / "config.json").is_file() and any(reply_dir.glob("*.safetensors"))
    assert type(reply_model.model).__name__ == "LlamaForCausalLM"
    assert reply_model.writes_tool_tags
    assert reply_model.tokenizer.convert_tokens_to_ids("<|im_end|>") in reply_model.stop_ids
    # the trained prompt is the served one: the tool in the shape the responder sends it
    assert chat_tool(WEATHER_TOOL) == TOOLS[0].to_chat_tool()


def test_a_missing_folder_a_base_model_and_an_unreachable_hub_id_say_what_to_do(tmp_path, reply_dir):
    with pytest.raises(ModelNotFoundError, match="make-tiny-reply-model"):
        load_reply_model(str(tmp_path / "nope"), device="cpu")
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text((reply_dir / "config.json").read_text())
    with pytest.raises(WrongModelTypeError, match="chat template"):
        load_reply_model(str(base), device="cpu")
    with pytest.raises(ModelLoadError, match="--reply-model DIR"):
        load_reply_model("nobody-here/no-such-model-xyz", device="cpu")


# -- replies ---------------------------------------------------------------------------------------------------


async def test_a_tool_call_then_an_answer_from_its_output(responder):
    events = await collect(responder, ReplyRequest(messages=[SYSTEM, QUESTION], tools=TOOLS))
    assert [type(e) for e in events] == [FunctionCallStarted, FunctionCallArgumentsDelta, FunctionCallDone]
    done = events[-1]
    assert (done.name, done.parsed) == ("get_weather", {"city": "Paris"})

    called = {"role": "assistant", "content": None, "tool_calls": [
        {"id": done.call_id, "type": "function", "function": {"name": done.name, "arguments": done.arguments}}]}
    output = {"role": "tool", "tool_call_id": done.call_id, "content": WEATHER_OUTPUT}
    fired = []
    answer = await collect(responder, ReplyRequest(messages=[SYSTEM, QUESTION, called, output], tools=TOOLS,
                                                   on_first_text=lambda: fired.append(1)))
    assert " ".join(answer) == WEATHER_ANSWER and len(answer) == 2  # phrase by phrase
    assert fired == [1]


def test_the_prompt_is_the_conversation_in_the_models_template_with_its_tools(responder):
    called = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]}
    text, forced = responder.prompt(ReplyRequest(messages=[SYSTEM, QUESTION, called], tools=TOOLS))
    assert forced == ""
    assert TRAINED_INSTRUCTIONS[0] in text and "<tools>" in text and '"get_weather"' in text
    assert '{"name": "get_weather", "arguments": {"city": "Rome"}}' in text  # arguments rendered as an object
    assert "(no output was received for this call)" in text  # the llm responder's well_formed history
    assert text.endswith("<|im_start|>assistant\n")
    none, _ = responder.prompt(ReplyRequest(messages=[SYSTEM, QUESTION], tools=TOOLS,
                                            tool_choice=ToolChoice("none")))
    assert "<tools>" not in none


async def test_a_forced_function_is_called(responder):
    request = ReplyRequest(messages=[SYSTEM, {"role": "user", "content": "Hello."}], tools=TOOLS,
                           tool_choice=ToolChoice("function", name="get_weather"))
    _, forced = responder.prompt(request)
    assert forced.endswith('"arguments": ')
    events = await collect(responder, request)
    assert isinstance(events[0], FunctionCallStarted) and events[0].name == "get_weather"
    assert isinstance(events[-1], FunctionCallDone | FunctionCallInvalid)  # random weights: args may be bad


async def test_four_sessions_at_once_are_batched_and_say_what_one_alone_says(reply_model):
    generator = ReplyGenerator(reply_model, Sampling(greedy=True))
    responder = LocalResponder(generator)
    try:
        hello = [SYSTEM, {"role": "user", "content": "Hello."}]
        alone = await collect(responder, ReplyRequest(messages=hello))
        assert " ".join(alone) == GREETING_ANSWER
        running, release = threading.Event(), threading.Event()

        def hold(token, error):  # holds the model's thread inside a batch until the four are queued
            running.set()
            release.wait(30)

        generator.submit([1] * 8, hold, 4)
        assert await asyncio.to_thread(running.wait, 30)
        asked = [asyncio.create_task(collect(responder, ReplyRequest(messages=hello))) for _ in range(4)]
        while generator._queue.qsize() < 4:
            await asyncio.sleep(0.01)
        release.set()
        together = await asyncio.gather(*asked)
        assert together == [alone] * 4
        assert generator.batch_sizes == [1, 1, 4]
    finally:
        await responder.aclose()


async def test_closing_a_reply_stops_its_generation_at_once_and_frees_the_thread(reply_model):
    endless = replace(reply_model, stop_ids=())  # never ends on its own
    generator = ReplyGenerator(endless, Sampling(greedy=True))
    responder = LocalResponder(generator, max_new_tokens=100_000, min_chars=1, max_chars=8)
    try:
        stream = responder.reply(ReplyRequest(messages=[SYSTEM, {"role": "user", "content": "Hello."}]))
        submitted = []
        submit = generator.submit
        generator.submit = lambda *args: submitted.append(submit(*args)) or submitted[-1]
        first = await stream.__anext__()
        assert first
        await stream.aclose()  # barge-in
        job = submitted[0]
        made_at_cancel = job.made
        short = LocalResponder(generator, max_new_tokens=60)  # the same model thread, behind the cancelled one
        after = await collect(short, ReplyRequest(messages=[SYSTEM, QUESTION], tools=TOOLS))
        assert isinstance(after[0], FunctionCallStarted) and after[0].name == "get_weather"
        assert job.ended and job.made <= made_at_cancel + 1  # at most the token being made when it was closed
        assert generator.batch_sizes == [1, 1]
    finally:
        await responder.aclose()


def test_a_cancelled_job_gets_nothing_more_and_a_queued_cancelled_job_never_runs(reply_model):
    generator = ReplyGenerator(replace(reply_model, stop_ids=()), Sampling(greedy=True))
    try:
        got, ended = [], threading.Event()

        def deliver(token, error):
            if token is None:
                ended.set()
            else:
                got.append(token)
                if len(got) == 3:
                    job.cancel()

        job = generator.submit([5, 6, 7], deliver, 100_000)
        assert ended.wait(30)
        assert len(got) == 3
        running, release, never = threading.Event(), threading.Event(), threading.Event()

        def hold(token, error):  # holds the model's thread inside the batch
            running.set()
            release.wait(30)

        blocker = generator.submit([5, 6, 7], hold, 200)
        assert running.wait(30)
        queued = generator.submit([5, 6, 7], lambda token, error: never.set() if token is not None else None, 50)
        queued.cancel()
        blocker.cancel()
        release.set()
        generator.close()
        assert not never.is_set() and generator.batch_sizes == [1, 1]  # the queued job never ran
    finally:
        generator.close()


async def test_a_template_that_cannot_render_the_conversation_is_a_responder_error(responder):
    with pytest.raises(ResponderError, match="chat template"):
        await collect(responder, ReplyRequest(messages=[{"role": "user", "content": None, "bad": object()},
                                                        {"role": "assistant", "tool_calls": [{"function": 3}]}]))


def test_the_tool_list_in_the_prompt_is_json_of_the_chat_shape(responder):
    text, _ = responder.prompt(ReplyRequest(messages=[SYSTEM, QUESTION], tools=TOOLS))
    line = next(line for line in text.splitlines() if line.startswith('{"type": "function"'))
    assert json.loads(line) == TOOLS[0].to_chat_tool()


# -- the command line, the session's settings, the benchmark -------------------------------------------------


def test_reply_model_flags_make_local_the_default_and_local_needs_a_model():
    from higgs_agent.cli import parse_args
    from higgs_agent.server import check_serve_args, default_responder

    args = parse_args(["serve", "--reply-model", "models/qwen"])
    assert default_responder(args) == "local" and check_serve_args(args) is None
    both = parse_args(["serve", "--reply-model", "m", "--llm-url", "http://x/v1", "--llm-model", "q"])
    assert default_responder(both) == "local"
    assert "--reply-model" in check_serve_args(parse_args(["serve", "--responder", "local"]))
    assert check_serve_args(parse_args(["serve", "--reply-model", "m", "--mcp-server", "shop=http://h/mcp"])) is None
    assert parse_args(["translate", "--wav", "a.wav", "--to", "fr", "-o", "b.wav", "--reply-model", "m"]).reply_model
    assert parse_args(["make-tiny-reply-model", "DIR", "--size", "small"]).size == "small"


def test_translation_is_offered_with_only_the_local_model_and_prefers_the_llm():
    from higgs_agent.agent.config import ServerOffer, SessionConfig
    from higgs_agent.agent.services import AgentServices

    config, notes = SessionConfig(model="m").updated({"higgs": {"translation": {"to": "fr"}}},
                                            ServerOffer(responders=("echo", "local")))
    assert config.translation is not None and config.translation.to == "fr" and not notes
    pick = AgentServices.translator
    holder = type("S", (), {"responders": {"echo": 1, "local": 2}})()
    assert pick(holder) == 2
    holder.responders["llm"] = 3
    assert pick(holder) == 3


def test_bench_reply_measures_one_alone_and_four_batched(reply_dir):
    import argparse

    from higgs_agent.bench.reply import run_reply_bench

    result = run_reply_bench(argparse.Namespace(reply_model=str(reply_dir), size="tiny", sessions=4, tokens=8,
                                                repeats=1, device="cpu", dtype="auto", threads=None))
    assert result["alone"]["first_word_ms"] > 0 and result["together"]["tokens_per_s_all"] > 0
    assert max(result["batch_sizes"]) >= 2
    json.dumps(result)


def test_bytes_that_never_make_a_character_are_not_held_for_ever(reply_model):
    tokenizer = reply_model.tokenizer
    stray = tokenizer.convert_tokens_to_ids(tokenizer.convert_ids_to_tokens(  # a lone continuation byte
        tokenizer("é", add_special_tokens=False)["input_ids"])[-1:])[0]
    word = tokenizer("ok", add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(tokenizer)
    out = [decoder.add(token) for token in [stray] * 6 + word]
    assert "".join(out).endswith("ok") and any(out[:6])


def test_closing_the_model_thread_cancels_the_running_batch_and_refuses_new_replies(reply_model):
    generator = ReplyGenerator(replace(reply_model, stop_ids=()), Sampling(greedy=True))
    running, ended = threading.Event(), threading.Event()

    def deliver(token, error):
        running.set()
        if token is None:
            ended.set()

    generator.submit([5, 6, 7], deliver, 100_000)
    assert running.wait(30)
    generator.close()
    assert ended.is_set() and not generator._thread.is_alive()
    with pytest.raises(RuntimeError, match="stopped"):
        generator.submit([5], deliver, 4)


def test_without_tools_a_reply_that_opens_with_a_brace_is_words_as_they_come():
    parser = ToolCallText(json_calls=False)
    assert parser.feed('{"name": "f", ') == ['{"name": "f", ']


async def test_a_function_call_round_in_text_mode_through_the_session(bundle, transcriber, reply_model):
    from higgs_agent.agent.services import AgentServices
    from higgs_agent.model.sampling import SamplingSettings
    from higgs_agent.streaming.engine import StreamingEngine
    from higgs_agent.testing.text_mode import TextConversation

    engine = StreamingEngine(bundle)
    local = LocalResponder(ReplyGenerator(reply_model, Sampling(greedy=True)))
    services = AgentServices(engine=engine, transcriber=transcriber, responders={"local": local},
                             default_responder="local", sampling=SamplingSettings(greedy=True, max_frames=60))
    try:
        async with TextConversation(services, session={"tools": [WEATHER_TOOL],
                                                       "instructions": TRAINED_INSTRUCTIONS[0]}) as chat:
            asked = await chat.run("What's the weather in Paris?")
            assert [item["type"] for item in asked.response["output"]] == ["function_call"]
            call = asked.calls[0]
            assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
            assert asked.of("response.function_call_arguments.done")[0]["arguments"] == call["arguments"]
            answered = await chat.answer(call["call_id"], WEATHER_OUTPUT)
        assert answered.status == "completed" and answered.text == WEATHER_ANSWER
    finally:
        await local.aclose()
        engine.close()
