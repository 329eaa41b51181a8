"""Does the caller mean to interrupt? (semantic_vad; server_vad cuts on any speech, as OpenAI documents.)

While the agent speaks, speech from the caller first only *holds* the reply's audio (the sound stops as fast
as a cut would, where the server paces the audio out: phone and WebRTC), and the reply goes on being made.
Then the words decide, from the readings the streaming transcription makes anyway:

- a word that is not a backchannel ("wait", "stop", "no, I meant ...") cuts the reply at once, as a barge-in
  always did, and the caller's turn is answered;
- only backchannels ("okay", "uh-huh", "yeah", "right") or no words at all (a cough, a door) when the turn
  ends: the reply plays on from where it was held, and the turn gets no answer of its own;
- speech longer than `MAX_BACKCHANNEL_MS` is an interruption whatever its words.

Users of Pipecat, LiveKit and Bolna report backchannels heard as interruptions, and agents that stop and never
resume, as their worst turn-taking problem; LiveKit's agents resume after a "false interruption" the same way.
"""

from __future__ import annotations

import re

MAX_BACKCHANNEL_MS = 1500  # speech this long is an interruption, whatever it says
# What a listener says to show they are listening, not to take the turn (English).
BACKCHANNELS = frozenset("""
    okay ok k uh huh uhhuh uh-huh mhm mm mmm hmm hm mm-hmm yeah yep yes yup right sure alright all got it i see
    see cool nice great good wow oh ah aha true exactly indeed gotcha totally absolutely sounds
""".split())


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z']+(?:-[a-z']+)*", text.lower())


def is_backchannel(text: str) -> bool:
    """Nothing but listener noises (or nothing at all)."""
    return all(word in BACKCHANNELS for word in words_of(text))
