"""Responders: echo, an OpenAI-compatible LLM (against a local fake server), and the Higgs text head."""

import asyncio
import json
import socket
from contextlib import aclosing

import pytest
import torch
from higgs_agent.testing.fake_llm import FakeLLM

from higgs_agent.agent.phrases import PhraseSplitter
from higgs_agent.agent.responders import (
    EchoResponder,
    LLMResponder,
    NativeResponder,
    ReplyRequest,
    Responder,
    ResponderError,
)

# Async tests share the session loop with the async fixtures (an HTTP client pool belongs to one loop).
on_session_loop = pytest.mark.asyncio(loop_scope="session")

HISTORY = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi."},
    {"role": "assistant", "content": "Hello, what can I"},  # cut short by barge-in: what was heard
    {"role": "user", "content": "Tell me a story."},
]


async def collect(iterator) -> list[str]:
    return [phrase async for phrase in iterator]


async def wait_for(event, timeout: float = 10.0) -> bool:
    return await asyncio.to_thread(event.wait, timeout)


# --- echo ---------------------------------------------------------------------------------------------------

@on_session_loop
async def test_echo_speaks_back_the_last_user_message_in_phrases():
    text = "Tell me a story. Make it a long one, with dragons, knights and a very clever princess. Thanks!"
    fired = []
    request = ReplyRequest(HISTORY[:-1] + [{"role": "user", "content": text}], on_first_text=lambda: fired.append(1))
    responder = EchoResponder()
    phrases = await collect(responder.reply(request))
    splitter = PhraseSplitter()
    assert phrases == splitter.feed(text) + splitter.flush()
    assert len(phrases) >= 3 and " ".join(phrases) == text
    assert fired == [1]
    assert isinstance(responder, Responder)


@on_session_loop
async def test_echo_of_nothing_is_silent():
    assert await collect(EchoResponder().reply(ReplyRequest([{"role": "system", "content": "x"}]))) == []
    assert await collect(EchoResponder().reply(ReplyRequest([{"role": "user", "content": "  "}]))) == []


# --- llm ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llm_server():
    with FakeLLM() as server:
        yield server


@pytest.fixture
def fake(llm_server):
    """The shared server with its knobs back at their defaults."""
    defaults = FakeLLM()
    for knob in ("reply", "chunk_chars", "delay_s", "hold_at", "fail_status", "fail_message", "api_key",
                 "malformed", "script", "ignore_stream"):
        setattr(llm_server, knob, getattr(defaults, knob))
    return llm_server


@pytest.fixture
async def llm(fake):
    responder = LLMResponder(fake.base_url, model="fake-model", api_key="sk-test", temperature=0.5, max_tokens=64)
    yield responder
    await responder.aclose()


@on_session_loop
async def test_llm_streams_the_reply_as_phrases(fake, llm):
    fake.reply = "Once upon a time, there was a dragon. It liked tea! The end"
    fired = []
    phrases = await collect(llm.reply(ReplyRequest(HISTORY, on_first_text=lambda: fired.append(1))))
    assert phrases == ["Once upon a time, there was a dragon.", "It liked tea!", "The end"]
    assert fired == [1]
    assert fake.completed.is_set() and not fake.disconnected.is_set()
    assert isinstance(llm, Responder)


@on_session_loop
async def test_llm_sends_the_history_model_and_options(fake, llm):
    await collect(llm.reply(ReplyRequest(HISTORY)))
    body = fake.requests[-1]
    assert body["messages"] == HISTORY
    assert body["model"] == "fake-model" and body["stream"] is True
    assert body["temperature"] == 0.5 and body["max_tokens"] == 64
    assert fake.headers[-1]["authorization"] == "Bearer sk-test"


@on_session_loop
async def test_llm_omits_unset_options(fake):
    responder = LLMResponder(fake.base_url + "/", model="m")
    assert responder.url == f"{fake.base_url}/chat/completions"
    await collect(responder.reply(ReplyRequest(HISTORY)))
    await responder.aclose()
    assert set(fake.requests[-1]) == {"model", "messages", "stream"}
    assert "authorization" not in fake.headers[-1]


@on_session_loop
async def test_llm_yields_the_first_phrase_before_the_server_sent_the_rest(fake, llm):
    first = "Hello there, my old friend."
    fake.reply = first + " This second sentence is still being written. And a third."
    fake.hold_at = len(first) + 3  # the space after the first sentence has gone out; then the server waits
    async with aclosing(llm.reply(ReplyRequest(HISTORY))) as phrases:
        assert await anext(phrases) == first
        # The server is provably mid-reply: it holds the rest until released.
        assert fake.holding.is_set() and not fake.completed.is_set()
        assert fake.sent_chars < len(fake.reply)
        fake.release()
        rest = [p async for p in phrases]
    assert rest == ["This second sentence is still being written.", "And a third."]
    assert fake.completed.is_set()


@on_session_loop
async def test_llm_aclose_mid_stream_disconnects_from_the_server(fake, llm):
    fake.reply = "First sentence here. " + "More words that never get sent. " * 20
    fake.hold_at = 25
    phrases = llm.reply(ReplyRequest(HISTORY))
    assert await anext(phrases) == "First sentence here."
    await phrases.aclose()
    assert await wait_for(fake.disconnected)
    assert not fake.completed.is_set()


@on_session_loop
async def test_llm_task_cancel_mid_stream_disconnects_from_the_server(fake, llm):
    fake.reply = "Never ends. " * 50
    fake.hold_at = 15
    got_first = asyncio.Event()

    async def consume():
        async with aclosing(llm.reply(ReplyRequest(HISTORY))) as phrases:
            async for _ in phrases:
                got_first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_for(fake.disconnected)


@on_session_loop
@pytest.mark.parametrize("status", [500, 503])
async def test_llm_http_error_raises_with_the_servers_message(fake, llm, status):
    fake.fail_status = status
    fake.fail_message = "The model is overloaded right now."
    with pytest.raises(ResponderError, match=f"HTTP {status}.*The model is overloaded right now") as info:
        await collect(llm.reply(ReplyRequest(HISTORY)))
    assert fake.base_url in str(info.value)


@on_session_loop
async def test_llm_wrong_api_key_is_a_401_with_advice(fake, llm):
    fake.api_key = "sk-other"
    with pytest.raises(ResponderError, match="HTTP 401.*Incorrect API key provided.*Check the API key"):
        await collect(llm.reply(ReplyRequest(HISTORY)))


@on_session_loop
async def test_llm_wrong_path_is_a_404_with_advice(fake):
    responder = LLMResponder(fake.base_url.removesuffix("/v1"), model="m")  # base URL without /v1
    with pytest.raises(ResponderError, match="HTTP 404.*including /v1"):
        await collect(responder.reply(ReplyRequest(HISTORY)))
    await responder.aclose()


@on_session_loop
async def test_llm_malformed_stream_raises(fake, llm):
    fake.reply = "Hello there, this reply breaks after its first delta."
    fake.malformed = True
    with pytest.raises(ResponderError, match="malformed event.*not JSON"):
        await collect(llm.reply(ReplyRequest(HISTORY)))


def chunk(content: str | None = None, finish: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


@on_session_loop
async def test_llm_reads_comments_multiline_events_and_a_missing_done(fake, llm):
    fake.script = "\n".join([
        ": keep-alive", "", "event: message", chunk("Hi there. "), "", "id: 2", chunk("Second"), "",
        'data: {"choices": [{"index": 0,', 'data:  "delta": {"content": " one."}}]}', "",  # one event, two lines
        chunk(finish="stop"), "",  # some servers stop here without [DONE]
    ])
    assert await collect(llm.reply(ReplyRequest(HISTORY))) == ["Hi there.", "Second one."]


@on_session_loop
async def test_llm_takes_a_whole_json_answer_from_a_server_that_does_not_stream(fake, llm):
    fake.reply = "Hello there. All at once."
    fake.ignore_stream = True
    assert await collect(llm.reply(ReplyRequest(HISTORY))) == ["Hello there.", "All at once."]


@on_session_loop
async def test_llm_stream_cut_short_raises(fake, llm):
    fake.script = chunk("Hi there. And then") + "\n\n"
    with pytest.raises(ResponderError, match="ended without"):
        await collect(llm.reply(ReplyRequest(HISTORY)))


@on_session_loop
async def test_llm_error_event_mid_stream_raises_with_its_message(fake, llm):
    fake.script = chunk("Hi. ") + '\n\ndata: {"error": {"message": "context length exceeded"}}\n\n'
    with pytest.raises(ResponderError, match="mid-stream: context length exceeded"):
        await collect(llm.reply(ReplyRequest(HISTORY)))


@on_session_loop
async def test_llm_connection_refused_names_the_url():
    with socket.socket() as sock:  # bound but not listening: connections to it are refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        responder = LLMResponder(url, model="m", timeout_s=5)
        with pytest.raises(ResponderError, match="cannot connect") as info:
            await collect(responder.reply(ReplyRequest(HISTORY)))
        await responder.aclose()
    assert f"{url}/chat/completions" in str(info.value)


@on_session_loop
async def test_llm_timeout_raises(fake):
    fake.delay_s = 2.0
    responder = LLMResponder(fake.base_url, model="m", timeout_s=0.2)
    with pytest.raises(ResponderError, match="did not answer within 0.2 s"):
        await collect(responder.reply(ReplyRequest(HISTORY)))
    await responder.aclose()


def test_llm_rejects_a_base_url_without_scheme():
    with pytest.raises(ValueError, match="http"):
        LLMResponder("127.0.0.1:8000/v1", model="m")


# --- native -------------------------------------------------------------------------------------------------

def user_codes(frames: int = 12) -> torch.Tensor:
    return torch.randint(0, 1024, (8, frames), generator=torch.Generator().manual_seed(3))


@on_session_loop
async def test_native_writes_phrases_and_stops_within_max_tokens(text_bundle):
    responder = NativeResponder(text_bundle, max_new_tokens=40, greedy=True, min_chars=4, max_chars=16)
    fired = []
    request = ReplyRequest(HISTORY, user_audio_codes=user_codes(), on_first_text=lambda: fired.append(1))
    phrases = await collect(responder.reply(request))
    generation = responder.last_generation
    assert phrases and all(p.strip() for p in phrases)
    assert fired == [1]
    assert len(generation.tokens) <= 40
    assert generation.stop_reason in ("max_tokens", "end_of_turn")
    assert generation.finished and generation._cache is None


@on_session_loop
async def test_native_greedy_is_deterministic_and_sampling_is_seeded(text_bundle):
    async def run(**kwargs):
        responder = NativeResponder(text_bundle, max_new_tokens=24, **kwargs)
        phrases = await collect(responder.reply(ReplyRequest(HISTORY, user_audio_codes=user_codes())))
        return phrases, responder.last_generation.tokens

    assert await run(greedy=True) == await run(greedy=True)
    assert await run(seed=5) == await run(seed=5)


@on_session_loop
async def test_native_hears_the_user_audio(text_bundle):
    responder = NativeResponder(text_bundle, max_new_tokens=12, greedy=True)
    await collect(responder.reply(ReplyRequest(HISTORY, user_audio_codes=user_codes())))
    with_audio = responder.last_generation
    assert with_audio.inputs.prompt_frames == 12 + 8 + 1  # codes + stream BOS/EOS + delay pattern
    await collect(responder.reply(ReplyRequest(HISTORY)))
    assert responder.last_generation.inputs.prompt_frames == 0
    assert responder.last_generation.inputs.input_ids.shape[1] < with_audio.inputs.input_ids.shape[1]


@on_session_loop
async def test_native_aclose_cancels_the_generation(text_bundle):
    responder = NativeResponder(text_bundle, max_new_tokens=500, greedy=True, min_chars=1, max_chars=2)
    phrases = responder.reply(ReplyRequest(HISTORY))
    assert (await anext(phrases)).strip()
    await phrases.aclose()
    generation = responder.last_generation
    assert generation.cancelled and generation._cache is None
    assert len(generation.tokens) < 500


def test_native_needs_the_text_head(bundle):
    with pytest.raises(ValueError, match="use_text_head=True"):
        NativeResponder(bundle)


def test_native_prompt_layout(text_bundle):
    from higgs_agent.model.text_reply import chat_inputs

    processor = text_bundle.processor
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <|eot_id|>"}]
    inputs = chat_inputs(processor, messages, user_codes(5))
    text = text_bundle.tokenizer.decode(inputs.input_ids[0])
    audio = "<|AUDIO_OUT|>" * (5 + 2) + "<|reserved_special_token_6|>" * 7
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                    f"<|start_header_id|>user<|end_header_id|>\n\n<|audio_bos|>{audio}<|audio_eos|>Hi <|eot_id|>"
                    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    # The typed "<|eot_id|>" is plain text, not the special token: only the real turn ends are.
    assert (inputs.input_ids == text_bundle.tokenizer.convert_tokens_to_ids("<|eot_id|>")).sum() == 2
    assert inputs.audio_input_ids.shape == (1, 5 + 2 + 7, 8)
    with pytest.raises(ValueError, match="no user turn"):
        chat_inputs(processor, [{"role": "system", "content": "x"}], user_codes(5))
