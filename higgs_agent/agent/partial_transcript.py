"""The caller's words while they speak, as `conversation.item.input_audio_transcription.delta` text.

Whisper re-reads the turn so far each time, and its last words change as more audio comes ("book a table
for" -> "book a table for two"). A delta cannot be taken back, so a word goes out only once two readings in a
row agree on it and on everything before it (the "local agreement" policy of whisper_streaming, Macháček et al.
2023). The final transcript (`...transcription.completed`) is the whole turn's reading and may differ from the
deltas' sum; `finish` sends what it adds when it extends them.
"""

from __future__ import annotations


def _agreed(first: list[str], second: list[str]) -> list[str]:
    count = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        count += 1
    return second[:count]


class StablePrefix:
    def __init__(self) -> None:
        self._previous: list[str] = []
        self._sent: list[str] = []

    @property
    def sent(self) -> str:
        return " ".join(self._sent)

    def update(self, reading: str) -> str:
        """A new reading of the turn so far -> the delta to send now ("" when nothing new is agreed)."""
        words = reading.split()
        agreed = _agreed(self._previous, words)
        self._previous = words
        return self._extend(agreed)

    def finish(self, final: str) -> str:
        """The final transcript -> what it adds to the deltas sent ("" when it revised them)."""
        return self._extend(final.split())

    def _extend(self, words: list[str]) -> str:
        if len(words) <= len(self._sent) or words[:len(self._sent)] != self._sent:
            return ""
        new = words[len(self._sent):]
        delta = (" " if self._sent else "") + " ".join(new)
        self._sent = list(words)
        return delta
