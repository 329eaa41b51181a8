"""The phrase splitter: where it cuts, and that chunking the input never changes the phrases."""

import random

import pytest

from higgs_agent.agent.phrases import PhraseSplitter


def whole(text: str, **kwargs) -> list[str]:
    splitter = PhraseSplitter(**kwargs)
    return splitter.feed(text) + splitter.flush()


def chunked(text: str, sizes, **kwargs) -> list[str]:
    splitter = PhraseSplitter(**kwargs)
    phrases, i = [], 0
    for size in sizes:
        phrases += splitter.feed(text[i:i + size])
        i += size
    phrases += splitter.feed(text[i:])
    return phrases + splitter.flush()


TEXTS = [
    "Hello there. How are you today? I'm fine!",
    "It costs 3.5 dollars, e.g. for Mr. Smith and Dr. Who. See example.com for more... Really?! Yes.",
    'He said "stop." Then he left (quickly.) The end',
    "First, we gather the ingredients; then, we mix them all together: flour, sugar, eggs and milk.",
    "1. Buy milk\n2. Walk the dog\n\nThat is all, folks.",
    "这是第一句。这是第二句！真的吗？是的，我们走吧、好的",
    "A very long sentence without any punctuation that goes on and on and on past the maximum length "
    "so the splitter has to cut it somewhere at a word boundary instead of waiting forever for a period",
    "Wait — what? The U.S. economy grew 2.5% in 2024. J. K. Rowling wrote it, i.e. she did.  Spaces   here.",
    "Numbers like 1,000,000 and times like 10:30 stay whole - but spaced dashes cut when long enough.",
    "",
    "   ",
    "no punctuation at all",
]


@pytest.mark.parametrize("text", TEXTS)
def test_character_by_character_equals_whole(text):
    expected = whole(text)
    assert chunked(text, [1] * len(text)) == expected


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("seed", range(5))
def test_random_chunks_equal_whole(text, seed):
    rng = random.Random(seed)
    sizes = [rng.randint(1, 7) for _ in range(len(text))]
    for kwargs in ({}, {"min_chars": 5, "max_chars": 40}):
        assert chunked(text, sizes, **kwargs) == whole(text, **kwargs)


def test_sentence_ends():
    assert whole("Hello there. How are you today? I'm fine!") == [
        "Hello there.", "How are you today?", "I'm fine!"]


def test_sentences_come_out_as_soon_as_they_are_known_to_end():
    splitter = PhraseSplitter()
    assert splitter.feed("Hello there.") == []  # "." could be "3.5" or "e.g." until the next character
    assert splitter.feed(" How") == ["Hello there."]
    assert splitter.pending == "How"
    assert splitter.flush() == ["How"]
    assert splitter.flush() == []


def test_numbers_and_abbreviations_are_not_cut():
    text = "It costs 3.5 dollars, e.g. for Mr. Smith and Dr. Who. The U.S. team won. J. K. Rowling wrote it."
    assert whole(text) == ["It costs 3.5 dollars, e.g. for Mr. Smith and Dr. Who.", "The U.S. team won.",
                           "J. K. Rowling wrote it."]


def test_urls_times_and_thousands_are_not_cut():
    text = "Visit example.com at 10:30 with 1,000 people, then we will see what happens next."
    assert whole(text, min_chars=5) == ["Visit example.com at 10:30 with 1,000 people,",
                                        "then we will see what happens next."]
    assert whole("Go to example.com. Then rest.") == ["Go to example.com.", "Then rest."]


def test_closing_quotes_and_runs_of_marks_stay_with_their_sentence():
    assert whole('He said "stop." Then he left... Really?! Yes.') == [
        'He said "stop."', "Then he left...", "Really?!", "Yes."]


def test_clause_marks_cut_only_long_phrases():
    text = "First, we gather the ingredients; then we mix them: flour, sugar and eggs."
    assert whole(text, min_chars=10) == [
        "First, we gather the ingredients;", "then we mix them:", "flour, sugar and eggs."]
    assert whole(text, min_chars=200, max_chars=400) == [text]


def test_dashes():
    assert whole("I thought about it for a while — and then I left.", min_chars=10) == [
        "I thought about it for a while —", "and then I left."]
    assert whole("A well-known fact - stated plainly.", min_chars=10) == ["A well-known fact -", "stated plainly."]
    assert whole("I thought about it—and then I left.", min_chars=10) == ["I thought about it—", "and then I left."]


def test_line_breaks_and_list_numbers():
    assert whole("1. Buy milk\n2. Walk the dog\n\nThat is all.") == ["1. Buy milk", "2. Walk the dog", "That is all."]


def test_cjk():
    assert whole("这是第一句。这是第二句！真的吗？是的，我们走吧", min_chars=2) == [
        "这是第一句。", "这是第二句！", "真的吗？", "是的，", "我们走吧"]


def test_long_text_is_cut_at_a_word_boundary():
    text = "word " * 50
    phrases = whole(text, min_chars=10, max_chars=32)
    assert all(len(p) <= 32 for p in phrases)
    assert " ".join(phrases) == text.strip()
    assert all(p.endswith("word") for p in phrases)
    assert whole("x" * 70, min_chars=10, max_chars=32) == ["x" * 32, "x" * 32, "x" * 6]


def test_whitespace_is_collapsed_and_empty_phrases_dropped():
    assert whole("  Hello   big\tworld.   \n\n  Bye  ") == ["Hello big world.", "Bye"]
    assert whole("") == []
    assert whole(" \n ") == []


def test_settings_are_checked():
    with pytest.raises(ValueError):
        PhraseSplitter(min_chars=0)
    with pytest.raises(ValueError):
        PhraseSplitter(min_chars=50, max_chars=10)
