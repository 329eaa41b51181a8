"""Voices: upload checks on real encoded audio, the on-disk library with the tiny model's real codec, tenants,
the HTTP API over a real socket with Whisper tiny.en, and the caller's voice gathered from espeak-ng turns."""

from __future__ import annotations

import io
import threading
import time

import av
import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
import uvicorn
from speech import ESPEAK, pad, silence, synthesize, word_error_rate
from starlette.applications import Starlette

from higgs_agent.audio import read_wav, write_wav
from higgs_agent.model.prompts import SpeechPrompt, build_inputs, encode_voice
from higgs_agent.transport.auth import ApiKeyMiddleware
from higgs_agent.transport.tenants import (
    DEFAULT_TENANT,
    TenantKeysError,
    build_authenticator,
    parse_keys,
    tenant_of,
)
from higgs_agent.voices import (
    CallerVoice,
    ClipError,
    ClipLimits,
    PresetReadOnly,
    VoiceLibrary,
    VoiceNameTaken,
    VoiceNotFound,
    WireAudioTape,
    check_clip,
    check_clip_bytes,
)
from higgs_agent.voices.caller_voice import MAX_PAUSE_MS, speech_only
from higgs_agent.voices.http import voice_routes

pytestmark = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed")

FOX = "the quick brown fox jumps over the lazy dog and then it runs far away into the woods"
RAIN = "it was raining in the city all day long, so we stayed at home and read our books"
SHORT = "hello there"


def speech(text: str = FOX, rate: int = 24_000, voice: str = "en-us") -> np.ndarray:
    return synthesize(text, voice=voice, sample_rate=rate)[0]


def encoded(audio: np.ndarray, rate: int, container: str, codec: str, codec_rate: int | None = None) -> bytes:
    """`audio` compressed by FFmpeg (through PyAV) into `container` with `codec`."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=codec_rate or rate, layout="mono")
        frame = av.AudioFrame.from_ndarray((audio * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buffer.getvalue()


def wav_bytes(audio: np.ndarray, rate: int = 24_000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def longest_digital_silence_s(audio: np.ndarray, rate: int) -> float:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], (np.abs(audio) < 1e-6).astype(np.int8), [0]])))
    return float((edges[1::2] - edges[::2]).max()) / rate if len(edges) else 0.0


def rms_db(audio: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.asarray(audio, dtype=np.float64) ** 2)) + 1e-12))


class CountingEncode:
    """The tiny model's real codec, counting its calls (the library promises to encode once)."""

    def __init__(self, processor) -> None:  # noqa: ANN001
        self.processor = processor
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, audio: np.ndarray, rate: int) -> torch.Tensor:
        with self._lock:
            self.calls += 1
        return encode_voice(self.processor, audio, rate, "").codes


# -- clip checks ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("container,codec,codec_rate", [
    ("wav", "pcm_s16le", None), ("flac", "flac", None), ("mp3", "libmp3lame", None),
    ("ogg", "libopus", 48_000), ("ipod", "aac", None),  # ipod = .m4a
])
def test_common_formats_decode_to_the_clip_that_was_recorded(container, codec, codec_rate):
    source = speech()
    clip = check_clip_bytes(encoded(source, 24_000, container, codec, codec_rate), allow_trim=False)
    assert clip.sample_rate == 24_000 and clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    assert abs(clip.duration_s - len(source) / 24_000) < 0.1  # codec padding is dropped
    assert abs(rms_db(clip.audio) - rms_db(source)) < 1.0
    assert 3.0 <= clip.speech_s <= clip.duration_s and clip.notes == ()


def test_stereo_and_other_rates_become_mono_24k():
    source = speech(rate=44_100)
    buffer = io.BytesIO()
    sf.write(buffer, np.stack([source, source], axis=1), 44_100, format="FLAC")
    clip = check_clip_bytes(buffer.getvalue(), allow_trim=False)
    assert clip.sample_rate == 24_000 and abs(clip.duration_s - len(source) / 44_100) < 0.01


@pytest.mark.parametrize("case,code", [
    ("text", "not_audio"), ("random_bytes", "not_audio"), ("empty", "not_audio"),
    ("oversize_garbage", "file_too_large"),  # the size is judged before any decoding
    ("short_speech_long_file", "too_short"), ("zeros", "silent"), ("faint_hiss", "silent"),
    ("overdriven", "clipped"), ("over_hard_cap", "too_long"),
])
def test_bad_clips_are_refused_each_with_its_own_code(case, code):
    limits = ClipLimits(max_bytes=200_000)
    data = {
        "text": lambda: b"name,transcript\nalice,hello there\n" * 20,
        "random_bytes": lambda: np.random.default_rng(0).bytes(5000),
        "empty": lambda: b"",
        "oversize_garbage": lambda: np.random.default_rng(1).bytes(300_000),
        "short_speech_long_file": lambda: encoded(pad(speech(SHORT, rate=16_000), 16_000, 4000, 4000), 16_000,
                                                  "mp3", "libmp3lame"),
        "zeros": lambda: wav_bytes(np.zeros(24_000 * 4, np.float32)),
        "faint_hiss": lambda: wav_bytes((np.random.default_rng(2).standard_normal(24_000 * 4) * 3e-4)
                                        .astype(np.float32)),
        "overdriven": lambda: encoded(np.clip(speech(rate=16_000) * 8, -1, 1), 16_000, "flac", "flac"),
        "over_hard_cap": lambda: encoded(np.tile(speech(rate=8_000), 26), 8_000, "mp3", "libmp3lame"),  # ~2 min
    }[case]()
    with pytest.raises(ClipError) as caught:
        check_clip_bytes(data, allow_trim=True, limits=limits)
    assert caught.value.code == code and caught.value.param == "file"
    if code == "too_short":
        assert "s of speech" in caught.value.message  # speech is measured, not the 9 s file


def test_long_clip_is_trimmed_at_a_pause_only_when_it_will_be_transcribed():
    sentence = pad(speech(RAIN), 24_000, 0, 400)
    long_clip = np.tile(sentence, 8)  # ~45 s of speech with a pause after each sentence
    with pytest.raises(ClipError) as caught:
        check_clip(long_clip, 24_000, allow_trim=False)  # a typed transcript would no longer match
    assert caught.value.code == "too_long"
    clip = check_clip(long_clip, 24_000, allow_trim=True)
    assert 25.0 <= clip.duration_s <= 30.0 and "trimmed" in clip.notes[0]
    tail = clip.audio[-720:]  # the last 30 ms: the cut falls in a pause, not in a word
    assert rms_db(tail) < rms_db(sentence) - 20


# -- the library ----------------------------------------------------------------------------------------------

@pytest.fixture
def encode(bundle):
    return CountingEncode(bundle.processor)


@pytest.fixture(scope="module")
def presets_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("presets")
    for name, text, voice in [("belinda", FOX, "en-us"), ("chadwick", RAIN, "en-gb")]:
        write_wav(folder / f"{name}.wav", speech(text, voice=voice))
        (folder / f"{name}.txt").write_text(text + "\n")
    (folder / "no_transcript.wav").write_bytes((folder / "belinda.wav").read_bytes())  # not a preset
    return folder


def test_a_voice_is_stored_on_disk_and_encoded_once(tmp_path, encode, bundle):
    library = VoiceLibrary(tmp_path / "voices", encode)
    clip = check_clip(speech(), 24_000, allow_trim=False)
    voice = library.create("acme", "Fox reader", clip.audio, 24_000, FOX)
    assert voice.id.startswith("voice_") and len(voice.id) == 30 and encode.calls == 1
    folder = tmp_path / "voices" / voice.id
    assert sorted(p.name for p in folder.iterdir()) == ["clip.wav", "codes.npy", "voice.json"]
    assert sf.info(str(folder / "clip.wav")).samplerate == 24_000
    stored = read_wav(folder / "clip.wav")
    assert np.max(np.abs(stored - clip.audio)) < 1e-4  # the clip itself, as PCM16
    expected = encode_voice(bundle.processor, clip.audio, 24_000, FOX).codes
    reference = library.reference("acme", voice.id)
    assert torch.equal(reference.codes, expected) and reference.transcript == FOX
    assert library.get("acme", "Fox reader") == voice  # by name too
    assert encode.calls == 1  # using a voice costs no codec work

    reopened = VoiceLibrary(tmp_path / "voices", encode)  # a server restart
    assert [v.id for v in reopened.voices("acme")] == [voice.id]
    assert torch.equal(reopened.reference("acme", voice.id).codes, expected) and encode.calls == 1

    assert library.delete("acme", voice.id) == voice
    assert not folder.exists() and library.voices("acme") == []
    with pytest.raises(VoiceNotFound):
        library.reference("acme", voice.id)


def test_presets_are_shared_read_only_and_encoded_once_on_first_use(tmp_path, encode, presets_dir):
    library = VoiceLibrary(tmp_path / "voices", encode, presets=presets_dir)
    names = [(v.id, v.name, v.preset) for v in library.voices("anyone")]
    assert names == [("preset_belinda", "belinda", True), ("preset_chadwick", "chadwick", True)]
    assert encode.calls == 0  # listing encodes nothing

    results = []
    threads = [threading.Thread(target=lambda: results.append(library.reference("t1", "belinda")))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert encode.calls == 1 and all(torch.equal(r.codes, results[0].codes) for r in results)
    assert results[0].transcript == FOX
    by_id = library.reference("t2", "preset_belinda")  # another tenant, by id: the same cached codes
    assert torch.equal(by_id.codes, results[0].codes) and encode.calls == 1

    assert torch.equal(VoiceLibrary(tmp_path / "voices", encode, presets=presets_dir)
                       .reference("t3", "belinda").codes, by_id.codes)
    assert encode.calls == 1  # the on-disk cache survives a restart
    with pytest.raises(PresetReadOnly):
        library.delete("t1", "preset_belinda")


def test_a_changed_preset_or_codec_is_encoded_again(tmp_path, encode, presets_dir):
    presets = tmp_path / "presets"
    presets.mkdir()
    for name in ("belinda.wav", "belinda.txt"):
        (presets / name).write_bytes((presets_dir / name).read_bytes())
    library = VoiceLibrary(tmp_path / "voices", encode, presets=presets, codec_id="codec-a")
    before = library.reference("t", "belinda").codes
    write_wav(presets / "belinda.wav", speech(RAIN, voice="en-gb"))
    after = library.reference("t", "belinda").codes
    assert encode.calls == 2 and after.shape != before.shape

    own = library.create("t", "mine", speech(), 24_000, FOX)
    assert encode.calls == 3
    other_codec = VoiceLibrary(tmp_path / "voices", encode, presets=presets, codec_id="codec-b")
    other_codec.reference("t", own.id)
    assert encode.calls == 4 and other_codec.get("t", own.id).codec == "codec-b"
    VoiceLibrary(tmp_path / "voices", encode, codec_id="codec-b").reference("t", own.id)
    assert encode.calls == 4  # re-encoded once, and saved


def test_tenants_cannot_see_use_or_delete_each_others_voices(tmp_path, encode):
    library = VoiceLibrary(tmp_path / "voices", encode)
    mine = library.create("acme", "narrator", speech(), 24_000, FOX)
    assert [v.id for v in library.voices("acme")] == [mine.id]
    assert library.voices("globex") == []
    for attempt in (lambda: library.get("globex", mine.id), lambda: library.get("globex", "narrator"),
                    lambda: library.reference("globex", mine.id), lambda: library.delete("globex", mine.id)):
        with pytest.raises(VoiceNotFound):
            attempt()
    assert library.get("acme", mine.id) == mine  # still there for its owner
    theirs = library.create("globex", "narrator", speech(RAIN), 24_000, RAIN)  # names are per tenant
    assert library.get("globex", "narrator") == theirs and library.get("acme", "narrator") == mine


def test_concurrent_uploads_all_land_and_a_name_is_taken_once(tmp_path, encode):
    library = VoiceLibrary(tmp_path / "voices", encode)
    audio = speech()
    made, refused = [], []

    def upload(name: str) -> None:
        try:
            made.append(library.create("acme", name, audio, 24_000, FOX))
        except VoiceNameTaken:
            refused.append(name)

    threads = [threading.Thread(target=upload, args=(name,))
               for name in ["a", "b", "c", "d", "same", "same", "same"]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(v.name for v in made) == ["a", "b", "c", "d", "same"] and refused == ["same", "same"]
    assert len({v.id for v in made}) == 5
    assert sorted(v.name for v in VoiceLibrary(tmp_path / "voices", encode).voices("acme")) == \
        ["a", "b", "c", "d", "same"]  # every folder complete on disk
    assert not [p for p in (tmp_path / "voices").iterdir() if p.name.startswith(".")]  # no staging left


def test_two_library_voices_make_one_two_speaker_prompt(tmp_path, encode, presets_dir, bundle):
    library = VoiceLibrary(tmp_path / "voices", encode, presets=presets_dir)
    voices = (library.reference("t", "belinda"), library.reference("t", "chadwick"))
    inputs = build_inputs(bundle.processor, SpeechPrompt("[SPEAKER0] Hi. [SPEAKER1] Hello.", speaker_voices=voices))
    assert inputs.audio_input_ids.shape[1] == sum(v.frames + 9 for v in voices)


# -- tenants --------------------------------------------------------------------------------------------------

def tenant_for(authenticator, key):  # noqa: ANN001, ANN201
    principal = authenticator.principal(key)
    return None if principal is None else principal.tenant


def test_keys_file_gives_one_tenant_per_key(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# tenant: key\nacme: sk-acme-1\n\nacme: sk-acme-2\nglobex: sk-globex-1\n")
    check = build_authenticator(keys_file=keys)
    assert tenant_for(check, "sk-acme-1") == tenant_for(check, "sk-acme-2") == "acme"
    assert tenant_for(check, "sk-globex-1") == "globex"
    assert tenant_for(check, "sk-acme-") is None and tenant_for(check, None) is None
    both = build_authenticator(api_key="sk-solo", keys_file=keys)
    assert tenant_for(both, "sk-solo") == DEFAULT_TENANT and tenant_for(both, "sk-globex-1") == "globex"
    assert tenant_for(build_authenticator(api_key="k"), "k") == DEFAULT_TENANT
    assert tenant_for(build_authenticator(api_key="k"), "x") is None
    assert tenant_for(build_authenticator(), None) == DEFAULT_TENANT  # an open server: one tenant


@pytest.mark.parametrize("text,needle", [
    ("acme: k1\nglobex: k1\n", "line 2: this key is already given"),
    ("acme k1\n", "line 1: expected 'tenant: key'"),
    ("ac me: k1\n", "tenant name"),
    ("acme: k 1\n", "whitespace"),
    ("# nothing\n", "names no keys"),
])
def test_bad_keys_files_are_refused_with_the_line(text, needle):
    with pytest.raises(TenantKeysError, match=needle):
        parse_keys(text)


# -- HTTP over a real socket ----------------------------------------------------------------------------------

ACME, GLOBEX = "sk-acme-1", "sk-globex-1"
HTTP_LIMITS = ClipLimits(max_bytes=1 << 20)


@pytest.fixture(scope="module")
def voice_server(tmp_path_factory, bundle, transcriber, presets_dir):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"acme: {ACME}\nglobex: {GLOBEX}\n")
    library = VoiceLibrary(tmp_path_factory.mktemp("http-voices"), CountingEncode(bundle.processor),
                           presets=presets_dir)
    routes = voice_routes(library, transcribe=lambda audio: transcriber.transcribe(audio).text,
                          tenant_of=tenant_of, limits=HTTP_LIMITS)
    app = ApiKeyMiddleware(Starlette(routes=routes), build_authenticator(keys_file=keys))  # as the server does
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and server.servers):
        assert time.monotonic() < deadline and thread.is_alive(), "the voice server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=30)


def client(base: str, key: str | None = ACME) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=base, headers=headers, timeout=120)


def upload(http: httpx.Client, data: bytes, name: str | None = "voice", transcript: str | None = None,
           filename: str = "clip.wav") -> httpx.Response:
    fields = {k: v for k, v in {"name": name, "transcript": transcript}.items() if v is not None}
    return http.post("/v1/voices", data=fields, files={"file": (filename, data)})


def test_upload_list_get_delete_per_tenant(voice_server):
    with client(voice_server) as acme, client(voice_server, GLOBEX) as globex:
        made = upload(acme, wav_bytes(speech()), name="Fox", transcript=FOX)
        assert made.status_code == 200, made.text
        voice = made.json()
        assert voice["object"] == "audio.voice" and voice["id"].startswith("voice_")
        assert voice["name"] == "Fox" and voice["transcript"] == FOX and not voice["preset"]
        assert 4.0 < voice["duration_s"] < 8.0 and voice["notes"] == []

        listed = acme.get("/v1/voices").json()
        assert listed["object"] == "list"
        assert [v["id"] for v in listed["data"]] == ["preset_belinda", "preset_chadwick", voice["id"]]
        assert voice["id"] not in [v["id"] for v in globex.get("/v1/voices").json()["data"]]
        assert acme.get(f"/v1/voices/{voice['id']}").json()["name"] == "Fox"
        for response in (globex.get(f"/v1/voices/{voice['id']}"), globex.delete(f"/v1/voices/{voice['id']}")):
            assert response.status_code == 404 and response.json()["error"]["code"] == "voice_not_found"

        gone = acme.delete(f"/v1/voices/{voice['id']}")
        assert gone.json() == {"id": voice["id"], "object": "audio.voice.deleted", "deleted": True}
        assert acme.get(f"/v1/voices/{voice['id']}").status_code == 404


def test_upload_without_transcript_is_transcribed_by_whisper(voice_server):
    with client(voice_server) as acme:
        made = upload(acme, encoded(speech(RAIN, rate=16_000), 16_000, "mp3", "libmp3lame"), name="Rain",
                      filename="rain.mp3")
        assert made.status_code == 200, made.text
        assert word_error_rate(RAIN, made.json()["transcript"]) < 0.35
        acme.delete(f"/v1/voices/{made.json()['id']}")


def test_a_long_upload_without_transcript_is_trimmed_and_says_so(voice_server):
    long_clip = np.tile(pad(speech(RAIN, rate=16_000), 16_000, 0, 400), 7)  # ~40 s
    with client(voice_server) as acme:
        made = upload(acme, encoded(long_clip, 16_000, "ogg", "libopus", 48_000), name="Long", filename="x.ogg")
        assert made.status_code == 200, made.text
        assert made.json()["duration_s"] <= 30.0 and "trimmed" in made.json()["notes"][0]
        refused = upload(acme, encoded(long_clip, 16_000, "ogg", "libopus", 48_000), name="Long2",
                         transcript="words for the whole forty seconds")
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "too_long"
        acme.delete(f"/v1/voices/{made.json()['id']}")


def _chunked(data: bytes, boundary: str):
    yield f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nbig\r\n".encode()
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
           "Content-Type: audio/wav\r\n\r\n").encode()
    for start in range(0, len(data), 65536):
        yield data[start:start + 65536]
    yield f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize("case,status,code,param", [
    ("no_key", 401, "invalid_api_key", None),
    ("json_body", 400, "invalid_content_type", None),
    ("no_file", 400, "missing_file", "file"),
    ("no_name", 400, "missing_name", "name"),
    ("not_audio", 400, "not_audio", "file"),
    ("too_short", 400, "too_short", "file"),
    ("silent", 400, "silent", "file"),
    ("clipped", 400, "clipped", "file"),
    ("too_large", 413, "file_too_large", "file"),
    ("too_large_chunked", 413, "file_too_large", "file"),
    ("delete_preset", 403, "preset_read_only", None),
    ("unknown_voice", 404, "voice_not_found", None),
])
def test_client_mistakes_get_openai_shaped_4xx_errors(voice_server, case, status, code, param):
    big = wav_bytes(np.tile(speech(), 5))  # ~1.4 MB of WAV, over the 1 MiB test limit
    with client(voice_server, None if case == "no_key" else ACME) as http:
        response = {
            "no_key": lambda: http.get("/v1/voices"),
            "json_body": lambda: http.post("/v1/voices", json={"name": "x", "file": "abc"}),
            "no_file": lambda: http.post("/v1/voices", files={"name": (None, "x")}),
            "no_name": lambda: http.post("/v1/voices", files={"file": ("a.wav", wav_bytes(speech()))}),
            "not_audio": lambda: upload(http, b"just some text, not a recording\n" * 50, filename="notes.txt"),
            "too_short": lambda: upload(http, wav_bytes(pad(speech(SHORT), 24_000, 2000, 2000)), transcript="hi"),
            "silent": lambda: upload(http, wav_bytes(silence(5000, 24_000)), transcript="nothing"),
            "clipped": lambda: upload(http, wav_bytes(np.clip(speech() * 8, -1, 1)), transcript=FOX),
            "too_large": lambda: upload(http, big, transcript=FOX),
            "too_large_chunked": lambda: http.post(
                "/v1/voices", content=_chunked(big, "b0und"),
                headers={"Content-Type": "multipart/form-data; boundary=b0und"}),
            "delete_preset": lambda: http.delete("/v1/voices/preset_belinda"),
            "unknown_voice": lambda: http.get("/v1/voices/voice_000000000000000000000000"),
        }[case]()
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == code and error["param"] == param
    assert error["message"]


def test_a_taken_name_is_a_conflict(voice_server):
    with client(voice_server) as acme:
        first = upload(acme, wav_bytes(speech()), name="Twin", transcript=FOX)
        again = upload(acme, wav_bytes(speech()), name="Twin", transcript=FOX)
        assert again.status_code == 409 and again.json()["error"]["code"] == "voice_name_taken"
        assert again.json()["error"]["param"] == "name"
        acme.delete(f"/v1/voices/{first.json()['id']}")


# -- the caller's voice ---------------------------------------------------------------------------------------

def test_tape_cuts_turns_out_by_session_time_and_forgets_the_oldest():
    audio = speech(rate=24_000)
    tape = WireAudioTape(24_000, keep_s=3.0)
    for start in range(0, len(audio), 480):  # 20 ms packets
        tape.push(audio[start:start + 480])
    end_ms = len(audio) * 1000 // 24_000
    assert tape.end_ms == end_ms
    start_ms, stop_ms = end_ms - 2000, end_ms - 1000
    assert np.array_equal(tape.slice_ms(start_ms, stop_ms), audio[start_ms * 24:stop_ms * 24])  # 24 samples/ms
    assert len(tape.slice_ms(0, end_ms)) <= 3 * 24_000 + 480  # older audio is gone


@pytest.mark.parametrize("rate", [24_000, 16_000, 8_000])
def test_speech_is_kept_at_the_wire_rate_without_long_silences(rate):
    words = speech(FOX, rate=rate)
    turn = np.concatenate([silence(1500, rate), words, silence(1200, rate), words, silence(2000, rate)])
    kept = speech_only(turn, rate)
    assert len(kept) < len(turn) - 4 * rate  # the 4.7 s of silence is gone but for short pauses
    assert len(kept) > 2 * len(words) * 0.9
    start = int(np.flatnonzero(np.abs(kept) > 0.01)[0])
    source = int(np.flatnonzero(np.abs(turn) > 0.01)[0])
    assert np.array_equal(kept[start:start + rate // 2], turn[source:source + rate // 2])  # samples as sent
    # The 1.2-2 s silences are gone; what is left of a pause is 200 ms plus the padding and webrtcvad's
    # hangover around the words (espeak's own pauses inside the sentence are up to ~0.4 s).
    assert longest_digital_silence_s(turn, rate) >= 1.5
    assert longest_digital_silence_s(kept, rate) <= MAX_PAUSE_MS / 1000 + 0.3


def test_caller_voice_gathers_turns_and_says_when_to_clone_again():
    rate = 8_000  # a phone call: the clip stays at 8 kHz
    voice = CallerVoice(target_s=10.0, max_s=12.0, min_s=3.0, growth_s=3.0)
    clips = []
    for text in (SHORT, FOX, RAIN, FOX):
        voice.add_turn(pad(speech(text, rate=rate), rate, 800, 800), rate, text)
        clips.append(voice.take_due_clip())
        assert voice.take_due_clip() is None  # taken: not due again without new audio
    assert clips[0] is None  # "hello there" alone is under 3 s of speech
    first = clips[1]  # the first clone, from whole turns: their exact words
    assert first.rate == rate and first.turns == 2 and first.transcript == f"{SHORT} {FOX}"
    assert 3.0 <= first.speech_s < 10.0
    second = clips[2]  # the third turn would pass 12 s: cut to fill 10 s, its words unknown
    assert second.turns == 3 and second.transcript is None and 9.5 <= second.speech_s <= 10.0
    assert np.array_equal(second.audio[:len(first.audio)], first.audio)  # gathered, not re-made
    assert voice.full and clips[3] is None
    assert voice.add_turn(speech(FOX, rate=rate), rate, FOX) is False  # full: the voice stays as it is


def test_turns_that_fit_keep_their_words_and_pauses_do_not_count_as_speech():
    rate = 16_000
    voice = CallerVoice()
    assert not voice.add_turn(silence(3000, rate), rate, "")  # nothing said
    assert voice.add_turn(pad(speech(FOX, rate=rate), rate, 3000, 3000), rate, FOX)
    assert voice.add_turn(pad(speech(SHORT, rate=rate), rate, 2000, 0), rate, SHORT)
    clip = voice.take_due_clip()
    assert clip.transcript == f"{FOX} {SHORT}" and clip.speech_s < 9.0 and not voice.full


def test_a_first_monologue_is_cut_and_leaves_the_transcript_to_be_made():
    rate = 24_000
    monologue = np.concatenate([speech(FOX, rate=rate), speech(RAIN, rate=rate), speech(FOX, rate=rate)])  # ~16 s
    voice = CallerVoice()
    assert voice.add_turn(monologue, rate, "three sentences")
    clip = voice.take_due_clip()
    assert clip is not None and clip.transcript is None and 9.0 <= clip.speech_s <= 10.0 and voice.full
