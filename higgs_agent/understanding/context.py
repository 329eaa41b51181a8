"""What was understood about one user turn (`TurnContext`), and the two ways it steers the reply: a line for the
LLM's system prompt (`context_line`: what to say) and a Higgs scene description (`delivery_scene`: how to say it).

The wording, in one table (`STATE_WORDING`):

| state    | in the LLM's context line | delivery added to the Higgs scene                                            |
| -------- | ------------------------- | ---------------------------------------------------------------------------- |
| upset    | sounds upset              | calm, warm and reassuring voice, speaking slowly and gently                  |
| excited  | sounds excited            | bright, cheerful voice with lively, upbeat energy                            |
| hesitant | sounds hesitant           | soft, patient and encouraging voice at an easy, unhurried pace               |
| calm     | sounds calm               | relaxed, even and friendly voice                                             |
| neutral  | sounds neutral            | none: the session's usual scene is kept                                      |

A context line reads, for example: "Caller context: speaker 2 (returning), sounds upset (pitch +35%, volume
+6 dB, pace +40% vs their usual), language en." Its parts: the speaker id with "new" (first heard in this
turn) or "returning"; the state with the changes against the speaker's own baseline that the state's rule reads;
the classifier's label and score when one is configured; the language the ASR heard. A part that is unknown is
left out. The delivery answers the caller's state rather than mirroring it: an upset caller gets a calm voice.
"""

from __future__ import annotations

from dataclasses import dataclass

from higgs_agent.understanding.emotion import BaselineDelta, EmotionState, ModelEmotion, Prosody
from higgs_agent.understanding.speaker_id import SpeakerMatch

DEFAULT_ROOM = "Audio is recorded from a quiet room."  # the scene Higgs' own examples start from


@dataclass(frozen=True)
class StateWording:
    heard_as: str  # in the LLM's context line
    delivery: str | None  # the reply's voice, for the Higgs scene; None keeps the usual scene
    cues: tuple[str, ...]  # the BaselineDelta fields the state's rule reads, shown in the context line


STATE_WORDING: dict[EmotionState, StateWording] = {
    EmotionState.UPSET: StateWording(
        "sounds upset", "The speaker talks in a calm, warm and reassuring voice, speaking slowly and gently.",
        ("pitch_pct", "energy_db", "rate_pct")),
    EmotionState.EXCITED: StateWording(
        "sounds excited", "The speaker talks in a bright, cheerful voice with lively, upbeat energy.",
        ("pitch_pct", "pitch_range_pct", "energy_db", "rate_pct")),
    EmotionState.HESITANT: StateWording(
        "sounds hesitant", "The speaker talks in a soft, patient and encouraging voice at an easy, unhurried pace.",
        ("rate_pct", "energy_db")),
    EmotionState.CALM: StateWording(
        "sounds calm", "The speaker talks in a relaxed, even and friendly voice.",
        ("energy_db", "pitch_pct", "rate_pct")),
    EmotionState.NEUTRAL: StateWording("sounds neutral", None, ()),
}

_CUE_FORMAT = {  # BaselineDelta field -> how the context line shows it
    "pitch_pct": "pitch {:+.0f}%",
    "pitch_range_pct": "pitch range {:+.0f}%",
    "energy_db": "volume {:+.0f} dB",
    "rate_pct": "pace {:+.0f}%",
}


@dataclass(frozen=True)
class EmotionReading:
    """How the turn sounded: the state, the numbers behind it, and the classifier's label when configured."""

    state: EmotionState
    prosody: Prosody
    vs_baseline: BaselineDelta | None  # None: the speaker has no baseline yet (their first turn), or is unknown
    model: ModelEmotion | None = None


@dataclass(frozen=True)
class TurnContext:
    """Everything understood about one user turn. `speaker` is None when the turn held too little speech to
    tell who spoke; `language` is the ASR's."""

    speaker: SpeakerMatch | None
    emotion: EmotionReading
    language: str | None

    def to_event_fields(self) -> dict:
        """The fields of the `higgs.input.context` event (the server adds `type`, `event_id` and `item_id`)."""
        prosody, delta, model = self.emotion.prosody, self.emotion.vs_baseline, self.emotion.model
        return {
            "speaker": None if self.speaker is None else {
                "id": self.speaker.id, "is_new": self.speaker.is_new,
                "similarity": round(self.speaker.similarity, 3)},
            "emotion": {
                "state": self.emotion.state.value,
                "pitch_hz": _round(prosody.pitch_hz, 1),
                "pitch_range_hz": _round(prosody.pitch_range_hz, 1),
                "energy_db": _round(prosody.energy_db, 1),
                "rate_wps": _round(prosody.rate_wps, 2),
                "vs_baseline": None if delta is None else {
                    "pitch_pct": _round(delta.pitch_pct, 1), "pitch_range_pct": _round(delta.pitch_range_pct, 1),
                    "energy_db": _round(delta.energy_db, 1), "rate_pct": _round(delta.rate_pct, 1)},
                "model": None if model is None else {"label": model.label, "score": round(model.score, 3)},
            },
            "language": self.language,
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def context_line(ctx: TurnContext) -> str:
    """One line for the LLM's system prompt saying who is speaking and how they sound (see the module table)."""
    parts = []
    if ctx.speaker is not None:
        parts.append(f"{ctx.speaker.id} ({'new' if ctx.speaker.is_new else 'returning'})")
    wording = STATE_WORDING[ctx.emotion.state]
    cues = _cues(ctx.emotion.vs_baseline, wording.cues)
    parts.append(f"{wording.heard_as} ({cues} vs their usual)" if cues else wording.heard_as)
    if ctx.emotion.model is not None:
        parts.append(f"emotion model hears {ctx.emotion.model.label} ({ctx.emotion.model.score:.2f})")
    if ctx.language:
        parts.append(f"language {ctx.language}")
    return "Caller context: " + ", ".join(parts) + "."


def _cues(delta: BaselineDelta | None, fields: tuple[str, ...]) -> str:
    if delta is None:
        return ""
    shown = [_CUE_FORMAT[name].format(getattr(delta, name)) for name in fields if getattr(delta, name) is not None]
    return ", ".join(shown)


def delivery_scene(ctx: TurnContext, room: str = DEFAULT_ROOM) -> str | None:
    """The Higgs scene description for the reply to this turn: `room` plus a delivery that answers the caller's
    state; None when the state asks for nothing special (keep the session's usual scene)."""
    delivery = STATE_WORDING[ctx.emotion.state].delivery
    if delivery is None:
        return None
    return f"{room.strip()} {delivery}".strip()
