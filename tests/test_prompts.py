import numpy as np
import pytest
import torch

from higgs_agent.model import special_tokens as st
from higgs_agent.model.prompts import (
    MAX_REFERENCE_FRAMES,
    AudioClip,
    SpeechPrompt,
    VoiceReference,
    build_inputs,
    encode_voice,
    prompt_text,
)


@pytest.fixture(scope="module")
def voice_wave():
    return (np.random.default_rng(0).standard_normal(24000 * 2) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def voice(bundle, voice_wave):
    return encode_voice(bundle.processor, voice_wave, 24000, "This is how I sound.")


def _ids(bundle, token):
    return bundle.tokenizer.convert_tokens_to_ids(token)


def test_plain_prompt_layout(bundle):
    inputs = build_inputs(bundle.processor, SpeechPrompt("Good morning."))
    ids = inputs.input_ids[0].tolist()
    assert ids[0] == 128000 and ids[-1] == 128013  # <|begin_of_text|> ... <|audio_out_bos|>
    text = bundle.tokenizer.decode(ids)
    assert text.startswith(f"{st.BEGIN_OF_TEXT}{st.START_HEADER}system{st.END_HEADER}\n\nGenerate audio following")
    assert f"{st.START_HEADER}user{st.END_HEADER}\n\nGood morning.{st.EOT}" in text
    assert inputs.audio_input_ids is None


def test_scene_goes_between_scene_tokens(bundle):
    text = prompt_text(bundle.processor, SpeechPrompt("Hi.", scene="A noisy cafe."))
    assert f"{st.SCENE_START}\nA noisy cafe.\n{st.SCENE_END}{st.EOT}" in text


def test_voice_reference_codes_are_in_the_prompt(bundle, voice):
    inputs = build_inputs(bundle.processor, SpeechPrompt("Read this.", voice=voice))
    ids = inputs.input_ids[0]
    rows = voice.frames + 2 + 7  # stream BOS + EOS, then 7 rows of delay
    assert int((ids == 128016).sum()) == rows - 7
    assert int((ids == 128014).sum()) == 7
    assert inputs.audio_input_ids.shape == (1, rows, 8)
    audio = inputs.audio_input_ids[0]
    assert torch.all(audio[0] == 1024)  # opening BOS row
    assert audio[1, 0] == voice.codes[0, 0]  # codebook 0 starts right away
    assert audio[1, 7] == 1024  # codebook 7 is still in its delay
    assert torch.equal(audio[8:8 + voice.frames, 7], voice.codes[7])  # delayed by 7 rows
    assert torch.all(audio[-1] == 1025)
    text = bundle.tokenizer.decode(ids)
    assert "This is how I sound." in text.split(st.AUDIO_OUT_BOS)[0]  # transcript before the audio
    assert text.endswith(f"{st.START_HEADER}assistant{st.END_HEADER}\n\n{st.AUDIO_OUT_BOS}")


def test_cached_codes_give_what_the_processor_gives(bundle, voice, voice_wave):
    prompt = SpeechPrompt("Read this.", scene="Studio.", voice=voice)
    ours = build_inputs(bundle.processor, prompt)
    theirs = bundle.processor(text=prompt_text(bundle.processor, prompt), audio=[voice_wave],
                              sampling_rate=24000, return_tensors="pt", add_special_tokens=False)
    assert torch.equal(ours.input_ids, theirs["input_ids"])
    assert torch.equal(ours.audio_input_ids, theirs["audio_input_ids"])


def test_multi_speaker_scene_lists_the_speakers(bundle):
    prompt = SpeechPrompt("[SPEAKER0] Hello. [SPEAKER1] Hi there.", speakers=("feminine, calm", "masculine, cheerful"))
    text = prompt_text(bundle.processor, prompt)
    assert "SPEAKER0: feminine, calm\nSPEAKER1: masculine, cheerful" in text
    assert "[SPEAKER0] Hello. [SPEAKER1] Hi there." in text


def test_undeclared_speaker_and_empty_text_are_refused():
    with pytest.raises(ValueError, match="SPEAKER2"):
        SpeechPrompt("[SPEAKER2] Hey.", speakers=("a", "b"))
    with pytest.raises(ValueError, match="empty"):
        SpeechPrompt("   ")


def test_voice_is_resampled_from_other_rates(bundle, voice_wave):
    at_16k = encode_voice(bundle.processor, voice_wave[: 16000 * 2], 16000, "x")
    assert at_16k.codes.shape == (8, 50)


@pytest.mark.parametrize("samples", [24000 * 2 + 500, 24000 * 3 + 123])  # not whole 960-sample hops
def test_odd_length_clip_gets_the_processors_own_codes(bundle, samples):
    wave = (np.random.default_rng(samples).standard_normal(samples) * 0.1).astype(np.float32)
    ours = encode_voice(bundle.processor, wave, 24000, "").codes
    prompt = SpeechPrompt("Read this.", voice=encode_voice(bundle.processor, wave, 24000, ""))
    theirs = bundle.processor(text=prompt_text(bundle.processor, prompt), audio=[wave], sampling_rate=24000,
                              return_tensors="pt", add_special_tokens=False)["audio_input_ids"][0]
    assert torch.equal(ours, bundle.processor.revert_delay_pattern(theirs)[1:-1].T)  # BOS/EOS rows dropped


@pytest.fixture(scope="module")
def two_voices(bundle):
    rng = np.random.default_rng(7)
    waves = [(rng.standard_normal(24000 + 300) * 0.1).astype(np.float32),
             (rng.standard_normal(24000 * 2) * 0.2).astype(np.float32)]
    voices = (encode_voice(bundle.processor, waves[0], 24000, "I am the first voice."),
              encode_voice(bundle.processor, waves[1], 24000, "And I am the second."))
    return waves, voices


def test_two_speaker_prompt_carries_both_references_in_order(bundle, two_voices):
    _, (first, second) = two_voices
    prompt = SpeechPrompt("[SPEAKER0] Shall we start? [SPEAKER1] Yes, let's.", speaker_voices=(first, second))
    inputs = build_inputs(bundle.processor, prompt)
    rows = inputs.audio_input_ids[0]
    first_rows, second_rows = first.frames + 2 + 7, second.frames + 2 + 7
    assert rows.shape == (first_rows + second_rows, 8)
    assert torch.equal(bundle.processor.revert_delay_pattern(rows[:first_rows])[1:-1].T, first.codes)
    assert torch.equal(bundle.processor.revert_delay_pattern(rows[first_rows:])[1:-1].T, second.codes)
    assert int((inputs.input_ids == 128016).sum()) == first_rows - 7 + second_rows - 7
    text = bundle.tokenizer.decode(inputs.input_ids[0])
    user = f"{st.START_HEADER}user{st.END_HEADER}\n\n"
    assistant_audio = f"{st.START_HEADER}assistant{st.END_HEADER}\n\n{st.AUDIO_OUT_BOS}"
    first_at = text.index(f"{user}[SPEAKER0] I am the first voice.{st.EOT}{assistant_audio}")
    second_at = text.index(f"{user}[SPEAKER1] And I am the second.{st.EOT}{assistant_audio}")
    spoken_at = text.index(f"{user}[SPEAKER0] Shall we start? [SPEAKER1] Yes, let's.{st.EOT}")
    assert first_at < second_at < spoken_at


def test_two_speaker_prompt_gives_what_the_processor_gives(bundle, two_voices):
    waves, voices = two_voices
    prompt = SpeechPrompt("[SPEAKER0] Hi. [SPEAKER1] Hello.", scene="A podcast studio.", speaker_voices=voices)
    ours = build_inputs(bundle.processor, prompt)
    theirs = bundle.processor(text=prompt_text(bundle.processor, prompt), audio=waves, sampling_rate=24000,
                              return_tensors="pt", add_special_tokens=False)
    assert torch.equal(ours.input_ids, theirs["input_ids"])
    assert torch.equal(ours.audio_input_ids, theirs["audio_input_ids"])
    assert torch.equal(ours.audio_input_ids_mask, theirs["audio_input_ids_mask"])


def test_speaker_voices_must_cover_the_tags_and_exclude_a_single_voice(two_voices):
    _, (first, second) = two_voices
    with pytest.raises(ValueError, match=r"SPEAKER2.*2 speaker voices"):
        SpeechPrompt("[SPEAKER0] a [SPEAKER2] b", speaker_voices=(first, second))
    with pytest.raises(ValueError, match="not both"):
        SpeechPrompt("[SPEAKER0] a", voice=first, speaker_voices=(first, second))


def test_a_reference_is_clipped_to_its_last_ten_seconds_as_codes_or_as_sound():
    """Codes keep their last 250 frames; sound its last 10 s (a remote engine's voice); a reference no longer
    than that is the same object, so a voice clipped where it is made is not re-made (nor re-encoded) per phrase."""
    codes = torch.arange(8 * 300).reshape(8, 300)
    clipped = VoiceReference(codes, "words").clipped()
    assert clipped.codes.shape == (8, MAX_REFERENCE_FRAMES) and torch.equal(clipped.codes, codes[:, -250:])
    samples = np.arange(16_000 * 12, dtype=np.float32)
    sound = VoiceReference(None, "words", audio=AudioClip(samples, 16_000)).clipped()
    assert sound.audio.rate == 16_000 and np.array_equal(sound.audio.samples, samples[-160_000:])
    assert sound.clipped() is sound and sound.transcript == "words"
