"""Reading the users' transcript JSON: a list of timed, speaker-labelled segments.

The format (seed/SOURCE_LAYOUT.md) is either a bare list of segments or {"segments": [...]};
each segment has start_ms, end_ms, text and optional speaker_id, gender, dialect, tone.
A transcript that cannot be read at all raises TranscriptError; a single bad segment becomes a
SegmentProblem so the rest of the transcript is still used.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

# The old tool's defaults for missing labels; training scripts group and filter on these strings.
DEFAULT_LABELS = {"speaker_id": "UNKNOWN", "gender": "unknown", "dialect": "unknown", "tone": "neutral"}


class TranscriptError(ValueError):
    """The transcript as a whole is unusable; the message names the object and the reason."""


@dataclass(frozen=True)
class TranscriptSegment:
    index: int  # position in the transcript: the i of {ID}_seg_{i}
    start_ms: float
    end_ms: float
    text: str
    speaker_id: str = DEFAULT_LABELS["speaker_id"]
    gender: str = DEFAULT_LABELS["gender"]
    dialect: str = DEFAULT_LABELS["dialect"]
    tone: str = DEFAULT_LABELS["tone"]


@dataclass(frozen=True)
class SegmentProblem:
    index: int
    reason: str


# About 31 years: anything later is not a time in a recording, and keeps sample arithmetic exact.
MAX_TIME_MS = 1e12


def _time(value: object, field: str) -> float:
    # bool is an int in Python; a transcript saying "start_ms": true is broken, not 1 ms.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} is not a number ({_short(value)})")
    try:
        value = float(value)
    except OverflowError:  # an integer too large for a float
        raise ValueError(f"{field} is out of range ({_short(value)})") from None
    if not math.isfinite(value):
        raise ValueError(f"{field} is not finite ({value})")
    if abs(value) > MAX_TIME_MS:
        raise ValueError(f"{field} is out of range ({value:g} ms)")
    return value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _clean(text: str) -> str:
    """JSON can carry lone surrogates ("\\ud800") that no UTF-8 writer accepts, and NUL bytes that
    break C-string consumers downstream; both are replaced, so one odd character costs a character,
    not the recording."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "").strip()


def _label(raw: dict, field: str) -> str:
    value = raw.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_LABELS[field]
    return _clean(str(value)) or DEFAULT_LABELS[field]


def parse_transcript(data: bytes, name: str) -> tuple[list[TranscriptSegment], list[SegmentProblem]]:
    """Parses one transcript object. `name` is used in error messages only."""
    try:
        text = data.decode("utf-8-sig")  # tolerate a BOM, which some editors add
    except UnicodeDecodeError as exc:
        raise TranscriptError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TranscriptError(f"{name}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise TranscriptError(f"{name}: unreadable JSON: {exc}") from None
    except RecursionError:
        raise TranscriptError(f"{name}: JSON nested too deeply") from None
    if isinstance(doc, dict):
        if "segments" not in doc:
            raise TranscriptError(f"{name}: JSON object has no 'segments' list")
        doc = doc["segments"]
    if not isinstance(doc, list):
        raise TranscriptError(f"{name}: expected a list of segments or {{\"segments\": [...]}}, got {type(doc).__name__}")

    segments: list[TranscriptSegment] = []
    problems: list[SegmentProblem] = []
    for index, raw in enumerate(doc):
        if not isinstance(raw, dict):
            problems.append(SegmentProblem(index, f"segment is a {type(raw).__name__}, not an object"))
            continue
        missing = [f for f in ("start_ms", "end_ms") if f not in raw]
        if missing:
            problems.append(SegmentProblem(index, f"missing {' and '.join(missing)}"))
            continue
        try:
            start, end = _time(raw["start_ms"], "start_ms"), _time(raw["end_ms"], "end_ms")
        except ValueError as exc:
            problems.append(SegmentProblem(index, str(exc)))
            continue
        text = raw.get("text", "")
        if text is None:
            text = ""
        if not isinstance(text, str):
            problems.append(SegmentProblem(index, f"text is a {type(text).__name__}, not a string"))
            continue
        segments.append(
            TranscriptSegment(
                index=index,
                start_ms=start,
                end_ms=end,
                text=_clean(text),
                speaker_id=_label(raw, "speaker_id"),
                gender=_label(raw, "gender"),
                dialect=_label(raw, "dialect"),
                tone=_label(raw, "tone"),
            )
        )
    return segments, problems
