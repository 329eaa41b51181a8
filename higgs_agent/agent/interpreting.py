"""Simultaneous interpreting: the clauses of a turn in progress, translated while the speaker goes on.

The partial transcript's agreed words (partial_transcript.py: two readings in a row agree, and they never change
after) grow as the speaker talks. Each time they close a clause and the words since the last clause sent are at
least `MIN_WORDS`, that span is handed over to be translated at once. A clause closes at a word that ends in
punctuation Whisper wrote (, . ; : ? !), or before a word that opens the next clause ("and", "then", "because",
...): Whisper's partial readings often leave the commas out of speech that runs on (measured on espeak-ng
speech: "this morning and I walked", where the final reading writes "this morning, then I walked").
Interpreters cut at the same places. When the turn ends, what its final transcript adds after the clauses
handed over is the last span. A speaker who talks for ten seconds is thus heard in translation from their first
clause, not after their last word (conference interpreters lag a clause or two; so does this).

The rest is placed by aligning the words handed over with the final reading (difflib): it may revise a word the
partial readings agreed on ("two" for "to", "I uh went" for "I went"), and what was already spoken cannot be
taken back, nor should it be said twice.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from difflib import SequenceMatcher

MIN_WORDS = 3  # a shorter clause ("Well,") waits for the next one: too little to translate on its own
CLAUSE_END = (",", ".", ";", ":", "?", "!", "…")
# Words that open a clause (English: the language of the bundled ASR): a clause ends before them.
CLAUSE_OPENERS = frozenset("""
    and but or so then because although though while whereas which who whom whose where when whenever after
    before until unless since if
""".split())
_KEPT_TURNS = 8


class ClauseSpans:
    def __init__(self, min_words: int = MIN_WORDS) -> None:
        self.min_words = min_words
        self._handed: OrderedDict[str, list[str]] = OrderedDict()  # turn -> the words handed over so far

    def agreed(self, item_id: str, text: str) -> str | None:
        """The turn's agreed words so far -> the span to translate now (None: no clause closed since the last)."""
        words = text.split()
        handed = self._handed.get(item_id, [])
        start = len(handed)  # the agreed words only grow: those handed over are their start
        end = max((i + 1 for i in range(start, len(words)) if _closes(words, i)), default=start)
        if end - start < self.min_words:
            return None
        self._handed[item_id] = words[:end]
        self._handed.move_to_end(item_id)
        while len(self._handed) > _KEPT_TURNS:
            self._handed.popitem(last=False)
        return " ".join(words[start:end])

    def handed(self, item_id: str) -> bool:
        return bool(self._handed.get(item_id))

    def rest(self, item_id: str, final: str) -> str:
        """The turn is over: what its final transcript says after the spans handed over ("" when nothing)."""
        handed, words = self._handed.pop(item_id, []), final.split()
        matcher = SequenceMatcher(None, [_bare(w) for w in handed], [_bare(w) for w in words], autojunk=False)
        matched = [block for block in matcher.get_matching_blocks() if block.size]
        if not matched:
            return " ".join(words[len(handed):])
        last = matched[-1]  # the handed words after the last match stand for as many final words
        return " ".join(words[last.b + last.size + len(handed) - (last.a + last.size):])


def _closes(words: list[str], index: int) -> bool:
    """Whether a clause ends with `words[index]` (the agreed words after it are known)."""
    if words[index].endswith(CLAUSE_END):
        return True
    following = words[index + 1] if index + 1 < len(words) else None
    return following is not None and following.lower().strip(",.;:?!") in CLAUSE_OPENERS


def _bare(word: str) -> str:
    """A word for aligning readings: its letters and digits, lower case ("morning," and "Morning" match)."""
    return re.sub(r"[^\w']", "", word.lower())
