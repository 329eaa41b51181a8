"""Caller understanding on real speech: espeak-ng voices (shaped by sox), the real Resemblyzer encoder, librosa's
pyin, webrtcvad, Whisper tiny.en, and tiny transformers models saved to disk and loaded back by the real paths."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading

import numpy as np
import pytest
from speech import CACHE_DIR, ESPEAK

from higgs_agent.audio import read_wav
from higgs_agent.model.errors import ModelNotFoundError
from higgs_agent.understanding import (
    BaselineDelta,
    EmotionClassifier,
    EmotionReading,
    EmotionState,
    Prosody,
    SpeakerBaseline,
    SpeakerMatch,
    StateRules,
    TurnAnalyzer,
    TurnContext,
    context_line,
    delivery_scene,
    load_speaker_encoder,
    measure_prosody,
    speaking_rate,
)
from higgs_agent.understanding.analyzer import THREAD_NAME
from higgs_agent.understanding.speaker_id import SpeakerRegistry

SOX = shutil.which("sox")
RATE = 16_000
WEATHER = "hello, can you tell me the weather forecast for tomorrow"
TABLE = "I would like to book a table for two people at eight tonight"
PARCEL = "my package never arrived and I have been waiting for two whole weeks"
REFUND = "could you please check the status of my refund from last month"


def turn(text: str, voice: str = "en-us+m3", wpm: int = 150, pitch: int = 50, sox: tuple[str, ...] = ()) -> np.ndarray:
    """espeak-ng speech (`pitch` is espeak's 0-99 base pitch: the voice's F0 without moving its formants), then
    optional sox effects (`vol 2`, `pitch 600` in cents, ...), as 16 kHz float32; cached like tests/speech.py."""
    if ESPEAK is None or SOX is None:
        pytest.fail("espeak-ng and sox are needed: run scripts/install.sh --test as root")
    key = hashlib.sha1(f"{voice}|{wpm}|{pitch}|{sox}|{text}".encode()).hexdigest()[:16]
    path = CACHE_DIR / f"understanding-{key}.wav"
    if not path.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE_DIR) as scratch:
            spoken, shaped = os.path.join(scratch, "spoken.wav"), os.path.join(scratch, "shaped.wav")
            subprocess.run([ESPEAK, "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", spoken, text], check=True,
                           capture_output=True, timeout=60)
            subprocess.run([SOX, spoken, shaped, *sox], check=True, capture_output=True, timeout=60)
            os.replace(shaped, path)  # atomic: concurrent runs never read half a file
    return read_wav(path, rate=RATE)


@pytest.fixture(scope="module")
def analyzer():
    analyzer = TurnAnalyzer.load()
    analyzer.warmup()
    yield analyzer
    analyzer.close()


def analyze(analyzer: TurnAnalyzer, caller, audio: np.ndarray, text: str, language: str = "en") -> TurnContext:
    async def both() -> TurnContext:
        return await analyzer.start(audio, caller).finish(text, language)

    return asyncio.run(both())


# -- who is speaking -----------------------------------------------------------------------------------------


def test_two_voices_get_two_ids_and_returning_voices_their_first(analyzer):
    caller = analyzer.new_caller_state()
    # espeak's voices share one synthesizer, so they sound more alike than people do: the second voice is
    # espeak's f4 with a higher base pitch, as far from m3 as most pairs of real callers are
    heard = [analyze(analyzer, caller, turn(text, voice, pitch=pitch), text).speaker
             for text, voice, pitch in [(WEATHER, "en-us+m3", 50), (TABLE, "en-us+f4", 70), (PARCEL, "en-us+m3", 50),
                                        (REFUND, "en-us+f4", 70)]]
    assert [(s.id, s.is_new) for s in heard] == [("speaker 1", True), ("speaker 2", True),
                                                 ("speaker 1", False), ("speaker 2", False)]
    assert heard[1].similarity < analyzer.speaker_threshold <= min(heard[2].similarity, heard[3].similarity)


def test_a_voice_pitched_apart_is_a_new_speaker(analyzer):
    caller = analyzer.new_caller_state()
    first = analyze(analyzer, caller, turn(WEATHER), WEATHER).speaker
    shifted = analyze(analyzer, caller, turn(TABLE, sox=("pitch", "600")), TABLE).speaker
    back = analyze(analyzer, caller, turn(PARCEL), PARCEL).speaker
    assert (first.id, shifted.id, back.id) == ("speaker 1", "speaker 2", "speaker 1")
    assert shifted.is_new and not back.is_new


def test_sessions_keep_their_own_speakers(analyzer):
    one, two = analyzer.new_caller_state(), analyzer.new_caller_state()
    analyze(analyzer, one, turn(WEATHER), WEATHER)
    analyze(analyzer, one, turn(TABLE, "en-us+f4", pitch=70), TABLE)
    fresh = analyze(analyzer, two, turn(PARCEL, "en-us+f4"), PARCEL).speaker
    assert (fresh.id, fresh.is_new) == ("speaker 1", True)


def test_a_turn_too_short_to_tell_who_spoke_has_no_speaker_and_no_state(analyzer):
    caller = analyzer.new_caller_state()
    ctx = analyze(analyzer, caller, turn("yes", wpm=200), "yes")
    assert ctx.speaker is None and ctx.emotion.vs_baseline is None
    assert ctx.emotion.state is EmotionState.NEUTRAL
    assert context_line(ctx) == "Caller context: sounds neutral, language en."
    assert caller.registry.speakers == []  # nothing learnt from it


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")  # inside torch
def test_a_transformers_xvector_model_from_a_local_folder(tmp_path):
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    torch.manual_seed(0)
    config = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, tdnn_dim=(32, 32, 32),
                         tdnn_kernel=(5, 3, 1), tdnn_dilation=(1, 2, 1), xvector_output_dim=24, num_buckets=32,
                         max_bucket_distance=100)
    WavLMForXVector(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(sampling_rate=RATE, return_attention_mask=True).save_pretrained(tmp_path)

    encoder = load_speaker_encoder(str(tmp_path))
    speech = turn(WEATHER)
    embedding = encoder.embed(speech)
    assert embedding.shape == (24,) and np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)
    assert encoder.embed(speech[: RATE // 10]) is None  # 0.1 s: too little to tell
    registry = SpeakerRegistry(threshold=encoder.default_threshold)
    assert registry.identify(embedding) == SpeakerMatch("speaker 1", True, 0.0)
    again = registry.identify(encoder.embed(speech))
    assert (again.id, again.is_new) == ("speaker 1", False) and again.similarity == pytest.approx(1.0, abs=1e-4)

    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_speaker_encoder(str(tmp_path / "missing"))


# -- how they sound ------------------------------------------------------------------------------------------


def test_loudness_moves_energy_and_nothing_else():
    loud, soft = measure_prosody(turn(WEATHER, sox=("vol", "2"))), measure_prosody(turn(WEATHER, sox=("vol", "0.25")))
    assert loud.energy_db - soft.energy_db == pytest.approx(20 * np.log10(2 / 0.25), abs=1.0)
    assert loud.pitch_hz == pytest.approx(soft.pitch_hz, rel=0.03)
    assert loud.speech_s == pytest.approx(soft.speech_s, abs=0.1)  # speech time does not depend on level


def test_pitch_shift_moves_pitch_median_and_range():
    high = measure_prosody(turn(WEATHER, sox=("pitch", "500")))
    low = measure_prosody(turn(WEATHER, sox=("pitch", "-500")))
    assert high.pitch_hz / low.pitch_hz == pytest.approx(2 ** (1000 / 1200), rel=0.1)  # 10 semitones apart
    assert high.pitch_range_hz > low.pitch_range_hz
    assert high.energy_db == pytest.approx(low.energy_db, abs=1.5)


def test_speaking_rate_follows_the_speed():
    fast, slow = measure_prosody(turn(WEATHER, wpm=220)), measure_prosody(turn(WEATHER, wpm=110))
    fast_rate, slow_rate = speaking_rate(WEATHER, fast.speech_s), speaking_rate(WEATHER, slow.speech_s)
    assert fast_rate / slow_rate > 1.5
    assert 1.5 < slow_rate < fast_rate < 5.5  # words per second of everyday speech
    assert speaking_rate(WEATHER, fast.speech_s, language="ja") is None  # no spaces, no word count
    assert speaking_rate("", fast.speech_s) is None


def test_silence_has_no_pitch():
    quiet = measure_prosody(np.zeros(RATE, dtype=np.float32))
    assert (quiet.pitch_hz, quiet.energy_db, quiet.speech_s) == (None, None, 0.0)


def test_an_upset_turn_against_the_speakers_baseline_steers_the_reply(analyzer, transcriber):
    caller = analyzer.new_caller_state()
    usual = [analyze(analyzer, caller, turn(text), text) for text in (WEATHER, TABLE, REFUND)]
    assert [c.emotion.state for c in usual] == [EmotionState.NEUTRAL] * 3
    assert usual[0].emotion.vs_baseline is None  # the first turn sets the baseline
    assert all(delivery_scene(c) is None for c in usual)

    # louder (+6 dB), higher (espeak pitch 50 -> 75) and faster (150 -> 210 wpm): the same person, upset
    audio = turn(PARCEL, wpm=210, pitch=75, sox=("vol", "2"))
    heard = transcriber.transcribe(audio)
    upset = analyze(analyzer, caller, audio, heard.text, heard.language)

    assert (upset.speaker.id, upset.speaker.is_new) == ("speaker 1", False)
    assert upset.emotion.state is EmotionState.UPSET
    delta = upset.emotion.vs_baseline
    assert delta.energy_db > 4 and delta.pitch_pct > 10 and delta.rate_pct > 15
    line = context_line(upset)
    assert line.startswith("Caller context: speaker 1 (returning), sounds upset (pitch +")
    assert line.endswith(" vs their usual), language en.") and "volume +" in line and "pace +" in line
    assert line != context_line(usual[-1])
    scene = delivery_scene(upset)
    assert scene is not None and "calm" in scene and "reassuring" in scene

    fields = upset.to_event_fields()
    assert fields["emotion"]["state"] == "upset" and fields["language"] == "en"
    assert fields["emotion"]["vs_baseline"]["energy_db"] == pytest.approx(delta.energy_db, abs=0.05)

    calm_again = analyze(analyzer, caller, turn(WEATHER), WEATHER)  # the baseline did not learn the outburst
    assert calm_again.emotion.state is EmotionState.NEUTRAL


def test_slow_speech_reads_as_hesitant_and_soft_speech_as_calm(analyzer):
    caller = analyzer.new_caller_state()
    for text in (WEATHER, TABLE):
        analyze(analyzer, caller, turn(text), text)
    hesitant = analyze(analyzer, caller, turn(PARCEL, wpm=95), PARCEL)
    calm = analyze(analyzer, caller, turn(REFUND, sox=("vol", "0.4")), REFUND)
    assert (hesitant.emotion.state, calm.emotion.state) == (EmotionState.HESITANT, EmotionState.CALM)
    assert "sounds hesitant (pace -" in context_line(hesitant)
    assert "sounds calm (volume -" in context_line(calm)
    assert delivery_scene(hesitant) != delivery_scene(calm)


def test_an_emotion_classifier_from_a_local_folder_runs_through_the_pipeline(tmp_path, analyzer):
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    labels = ["angry", "happy", "neutral", "sad"]
    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                            conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, classifier_proj_size=16,
                            id2label=dict(enumerate(labels)), label2id={k: i for i, k in enumerate(labels)})
    Wav2Vec2ForSequenceClassification(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(sampling_rate=RATE).save_pretrained(tmp_path)

    classifier = EmotionClassifier(str(tmp_path))
    assert classifier.labels == labels
    with_model = TurnAnalyzer(analyzer.speaker_encoder, classifier)
    try:
        ctx = analyze(with_model, with_model.new_caller_state(), turn(WEATHER), WEATHER)
    finally:
        with_model.close()
    model = ctx.emotion.model
    assert model.label in labels and 0.0 <= model.score <= 1.0
    assert ctx.to_event_fields()["emotion"]["model"] == {"label": model.label, "score": round(model.score, 3)}
    assert f"emotion model hears {model.label} ({model.score:.2f})" in context_line(ctx)

    with pytest.raises(ModelNotFoundError):
        EmotionClassifier(str(tmp_path / "missing"))


# -- the async API and the payload ---------------------------------------------------------------------------


async def test_audio_work_runs_on_the_analyzers_own_thread_while_the_loop_goes_on(analyzer):
    caller = analyzer.new_caller_state()
    analysis = analyzer.start(turn(TABLE), caller)
    assert any(t.name.startswith(THREAD_NAME) for t in threading.enumerate())
    ticks = 0
    while not analysis.done():  # the event loop stays free while the audio is analyzed
        ticks += 1
        await asyncio.sleep(0.001)
    ctx = await analysis.finish(TABLE, "en")
    assert ticks > 0 and analysis.audio_ms > 0
    assert await analysis.finish("other words", "fr") is ctx  # one turn is learnt once
    assert len(caller.registry.speakers) == 1 and caller.baselines["speaker 1"].turns == 1


def test_event_fields_have_exactly_the_documented_shape(analyzer):
    caller = analyzer.new_caller_state()
    analyze(analyzer, caller, turn(WEATHER), WEATHER)
    fields = analyze(analyzer, caller, turn(TABLE), TABLE, language="en").to_event_fields()
    assert fields.keys() == {"speaker", "emotion", "language"}
    assert fields["speaker"].keys() == {"id", "is_new", "similarity"}
    assert fields["emotion"].keys() == {"state", "pitch_hz", "pitch_range_hz", "energy_db", "rate_wps",
                                        "vs_baseline", "model"}
    assert fields["emotion"]["vs_baseline"].keys() == {"pitch_pct", "pitch_range_pct", "energy_db", "rate_pct"}
    assert fields["emotion"]["model"] is None
    assert 60 < fields["emotion"]["pitch_hz"] < 200 and -40 < fields["emotion"]["energy_db"] < 0
    import json

    assert json.loads(json.dumps(fields)) == fields  # plain JSON types only


# -- the rules and the wording, as pure functions ------------------------------------------------------------


def _ctx(state: EmotionState, delta: BaselineDelta | None, speaker: SpeakerMatch | None = None,
         language: str | None = "en") -> TurnContext:
    return TurnContext(speaker, EmotionReading(state, Prosody(120.0, 40.0, -20.0, 3.0), delta), language)


@pytest.mark.parametrize("delta, state", [
    (BaselineDelta(12, 0, 5, 20), EmotionState.UPSET),
    (BaselineDelta(12, 0, 5, 10), EmotionState.NEUTRAL),  # not hurried: two cues are not enough
    (BaselineDelta(20, 50, 0, 20), EmotionState.EXCITED),
    (BaselineDelta(20, 50, 0, 0), EmotionState.NEUTRAL),  # animated pitch alone
    (BaselineDelta(0, 0, 0, -30), EmotionState.HESITANT),
    (BaselineDelta(0, 0, 3, -30), EmotionState.NEUTRAL),  # slow but loud: not hesitant
    (BaselineDelta(0, 0, -6, 0), EmotionState.CALM),
    (BaselineDelta(None, None, 6, 30), EmotionState.NEUTRAL),  # no pitch: the upset rule cannot fire
    (None, EmotionState.NEUTRAL),
])
def test_state_rules(delta, state):
    assert StateRules().classify(delta) is state


def test_baseline_is_the_mean_of_the_first_turns_then_frozen():
    baseline = SpeakerBaseline(turns_needed=2)
    assert baseline.compare(Prosody(100, 20, -20, 3)) is None
    for prosody in (Prosody(100, 20, -20, 2.0), Prosody(120, 30, -22, 4.0), Prosody(300, 90, -5, 9.0)):
        baseline.learn(prosody)
    assert baseline.mean() == Prosody(110, 25, -21, 3.0)
    delta = baseline.compare(Prosody(132, 25, -15, None))
    assert delta == BaselineDelta(pytest.approx(20), pytest.approx(0), pytest.approx(6), None)


def test_context_line_and_scene_wording():
    upset = _ctx(EmotionState.UPSET, BaselineDelta(35.2, 10, 6.4, 40), SpeakerMatch("speaker 2", False, 0.81))
    assert context_line(upset) == ("Caller context: speaker 2 (returning), sounds upset (pitch +35%, volume +6 dB, "
                                   "pace +40% vs their usual), language en.")
    assert delivery_scene(upset) == ("Audio is recorded from a quiet room. The speaker talks in a calm, warm and "
                                     "reassuring voice, speaking slowly and gently.")
    assert delivery_scene(upset, room="Audio is recorded over a phone line.").startswith("Audio is recorded over")
    first = _ctx(EmotionState.NEUTRAL, None, SpeakerMatch("speaker 1", True, 0.0), language=None)
    assert context_line(first) == "Caller context: speaker 1 (new), sounds neutral."
    assert delivery_scene(first) is None
    scenes = {delivery_scene(_ctx(state, BaselineDelta(0, 0, 0, 0))) for state in EmotionState}
    assert len(scenes) == len(EmotionState)  # each state sounds different; neutral keeps the usual scene (None)


# -- the benchmark -------------------------------------------------------------------------------------------


def test_bench_measures_analysis_next_to_transcription_and_calibrates_on_a_corpus(tmp_path):
    import argparse

    from higgs_agent.audio import write_wav
    from higgs_agent.bench.understanding import run_understanding_bench

    texts = (WEATHER, TABLE, PARCEL, REFUND)
    for number, (voice, pitch) in enumerate([("en-us+m3", 50), ("en-us+f4", 70)], start=1):
        for index, text in enumerate(texts):  # LibriSpeech names: SPEAKER-CHAPTER-UTTERANCE
            write_wav(tmp_path / f"{number}00-1-{index}.wav", turn(text, voice, pitch=pitch), RATE)
    write_wav(tmp_path / "900-1-0.wav", turn(WEATHER, "en-gb+f2"), RATE)  # a speaker heard once

    figures = run_understanding_bench(argparse.Namespace(turns=2, speech_corpus=str(tmp_path)))
    assert figures["turns"] == 2
    assert figures["analysis_ms_p50"] > 0 and figures["transcription_ms_p50"] > 0
    assert figures["overlap_wait_ms_p50"] >= 0 and figures["speaker_embed_ms_p50"] > 0
    assert set(figures["pitch_tracker_ms_per_audio_s"]) == {"pyin_0.1_semitone", "pyin_0.2_semitone (used)",
                                                            "yin (no voicing)"}
    calibration = figures["speaker_calibration"]
    assert calibration["threshold"] == 0.65
    for length in calibration["by_turn_length"].values():
        # each of 2 enrolled speakers: its 4 turns against 1, 2, 3 earlier ones (3 + 2 + 1 trials); against the
        # 5 turns of the others, with its first turn and with its first three as the centroid
        assert (length["same_trials"], length["other_trials"]) == (12, 20)
    assert 0.5 <= calibration["minimax_threshold"] <= 0.9
    states = figures["read_speech_states"]
    assert states["turns"] == 4  # turns 3 and 4 of each enrolled speaker
    assert sum(states["states_pct"].values()) == pytest.approx(100, abs=0.2)


class _HeldEncoder:
    """A speaker encoder whose first embedding waits until released (a slow warm-up)."""

    default_threshold = 0.75

    def __init__(self) -> None:
        self.release = threading.Event()

    def embed(self, audio: np.ndarray) -> np.ndarray:
        assert self.release.wait(30)
        return np.ones(256, dtype=np.float32) / 16.0


def test_a_background_warm_up_is_reported_until_it_is_done():
    """`serve` warms the analyzer up while it already serves; turns skip the analysis while `warming`."""
    encoder = _HeldEncoder()
    analyzer = TurnAnalyzer(encoder)
    try:
        assert not analyzer.warming  # no warm-up asked for: ready as it is
        done = analyzer.warm_up_in_background()
        assert analyzer.warming
        encoder.release.set()
        assert done.result(60) > 0
        assert not analyzer.warming
    finally:
        analyzer.close()
