"""Cut a stream of reply text into speakable phrases, so speech can start on the first one.

`PhraseSplitter.feed(delta)` returns the phrases the text so far completes; `flush()` returns the rest
at the end of the reply. A cut is decided only from text already seen plus one character of look-ahead,
so the phrases do not depend on how the text was chunked: feeding it character by character gives the
same phrases as feeding it whole (tested).

Where it cuts, in order of preference:
- sentence ends: `.` `!` `?` `…` (runs such as `?!` or `...` included), then any closing quotes or
  brackets, then whitespace; CJK `。` `！` `？` need no whitespace after them;
- line breaks (lists and paragraphs in LLM output);
- clause marks once the phrase has `min_chars`: `,` `;` `:` followed by whitespace, a spaced ` - ` or ` – `,
  an em dash `—`, and CJK `，` `、` `；` `：`;
- past `max_chars` with no cut: at the last whitespace within `max_chars` (at `max_chars` exactly when the
  text has no whitespace there, e.g. CJK without punctuation).

Not cuts: a `.` inside a number or a word (`3.5`, `example.com`), abbreviations with inner periods
(`e.g.`, `i.e.`, `U.S.`, `a.m.`), common titles and short forms (`Mr.`, `Dr.`, `vs.`, `etc.`, ...),
single-letter initials (`J. K. Rowling`), and a list number opening a phrase (`1. Buy milk`).

Known misses (the cost of a missed cut is a later start, never wrong speech): a sentence that really
ends with one of those abbreviations or a single letter (`... at 5 p.m. Then`, `plan B. Then`) is not
cut there; a lowercase word after a period is still treated as a new sentence; markdown is not removed.
Whitespace runs inside a phrase collapse to one space; phrases are stripped and never empty.
"""

from __future__ import annotations

SENTENCE_ENDS = frozenset(".!?…")
CJK_SENTENCE_ENDS = frozenset("。！？｡")
CLAUSE_MARKS = frozenset(",;:")
CJK_CLAUSE_MARKS = frozenset("，、；：")
SPACED_DASHES = frozenset("-–")  # clause marks only with whitespace on both sides
EM_DASH = "—"
CLOSERS = frozenset("\"')]}»”’」』）】")
_MARKS = SENTENCE_ENDS | CJK_SENTENCE_ENDS | CLAUSE_MARKS | CJK_CLAUSE_MARKS | SPACED_DASHES | CLOSERS | {EM_DASH}
_ALL_ENDS = SENTENCE_ENDS | CJK_SENTENCE_ENDS
_OPENERS = "\"'([{«“‘「『（【"

# Lowercased words that a period follows without ending the sentence.
ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "cf", "approx", "dept", "fig",
    "gen", "gov", "sgt", "capt", "lt", "col", "rev", "hon", "inc", "ltd", "jan", "feb", "mar", "apr", "jun",
    "jul", "aug", "sep", "sept", "oct", "nov", "dec",
})
_ROMAN = frozenset("ivxlcdm")


def normalize(text: str) -> str:
    """Strip, and collapse every whitespace run to one space."""
    return " ".join(text.split())


class PhraseSplitter:
    """Incremental phrase cutter for one reply. Not thread-safe; make one per reply."""

    def __init__(self, min_chars: int = 24, max_chars: int = 160) -> None:
        if min_chars < 1:
            raise ValueError("min_chars must be >= 1")
        if max_chars < min_chars:
            raise ValueError("max_chars must be >= min_chars")
        self.min_chars = min_chars
        self.max_chars = max_chars
        self._buf = ""  # text not yet emitted
        self._scan = 0  # positions before this one (from the phrase start) are known not to be cuts

    def feed(self, text: str) -> list[str]:
        """Add a delta of reply text; return the phrases it completes, in order."""
        if not text:
            return []
        self._buf += text
        return self._cut(final=False)

    def flush(self) -> list[str]:
        """End of the reply: return every phrase left, the unfinished last one included."""
        phrases = self._cut(final=True)
        rest = normalize(self._buf)
        self._buf, self._scan = "", 0
        if rest:
            phrases.append(rest)
        return phrases

    @property
    def pending(self) -> str:
        """Text received but not yet returned as a phrase."""
        return normalize(self._buf)

    def _cut(self, final: bool) -> list[str]:
        phrases: list[str] = []
        while True:
            start = len(self._buf) - len(self._buf.lstrip())
            if start:  # a phrase never starts with whitespace
                self._buf = self._buf[start:]
                self._scan = max(0, self._scan - start)
            cut = self._find_cut(final)
            if cut is None:
                return phrases
            phrase = normalize(self._buf[:cut])
            self._buf = self._buf[cut:]
            self._scan = 0
            if phrase:
                phrases.append(phrase)

    def _find_cut(self, final: bool) -> int | None:
        """The end of the first phrase in the buffer (which starts at a non-space), or None to wait."""
        buf = self._buf
        i = self._scan
        while i < len(buf):
            if i >= self.max_chars:  # positions 0..max_chars-1 hold no cut
                return self._hard_cut(buf)
            cut = self._cut_after(buf, i, final)
            if cut is None:
                break
            if cut is not False:
                return cut
            i += 1
        self._scan = i
        return None

    def _hard_cut(self, buf: str) -> int:
        window = buf[: self.max_chars + 1]
        for j in range(len(window) - 1, 0, -1):
            if window[j].isspace():
                return j
        return self.max_chars

    def _cut_after(self, buf: str, i: int, final: bool) -> int | bool | None:
        """Whether a phrase ends at character `i`: the cut index, False, or None (needs look-ahead)."""
        ch = buf[i]
        if ch == "\n":
            return i
        if ch not in _MARKS:
            return False
        if i + 1 < len(buf):
            nxt = buf[i + 1]
        elif final:
            nxt = " "
        else:
            return None
        if nxt in CLOSERS or nxt in _ALL_ENDS:
            return False  # the run of marks goes on; decide at its end
        j = i
        while j > 0 and buf[j] in CLOSERS:
            j -= 1
        mark = buf[j]
        length = i + 1
        if mark in CJK_SENTENCE_ENDS:
            return i + 1
        if mark in CJK_CLAUSE_MARKS or mark == EM_DASH:
            return i + 1 if length >= self.min_chars and nxt != EM_DASH else False
        if not nxt.isspace():
            return False
        if mark in SENTENCE_ENDS:
            if mark == "." and (j == 0 or buf[j - 1] != ".") and not self._ends_sentence(buf, j):
                return False
            return i + 1
        if mark in CLAUSE_MARKS or (mark in SPACED_DASHES and j > 0 and buf[j - 1].isspace()):
            return i + 1 if length >= self.min_chars else False
        return False

    @staticmethod
    def _ends_sentence(buf: str, period: int) -> bool:
        """Whether the single period at `period` (followed by whitespace) ends a sentence."""
        k = period
        while k > 0 and not buf[k - 1].isspace():
            k -= 1
        word = buf[k:period].lstrip(_OPENERS)
        if not word:
            return True
        lower = word.lower()
        if lower in ABBREVIATIONS:
            return False
        parts = word.split(".")
        if len(parts) > 1 and all(part.isalpha() and len(part) <= 2 for part in parts):  # e.g, U.S, a.m, Ph.D
            return False
        if len(word) == 1 and word.isalpha():  # an initial
            return False
        opens_phrase = k == 0
        if opens_phrase and (word.isdigit() or set(lower) <= _ROMAN):  # "1." or "iv." heading a list item
            return False
        return True
