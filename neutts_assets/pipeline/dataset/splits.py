"""Which split a dataset row belongs to: `train`, `validation` and (when asked) `test`, with no
speaker in two splits, and a row's split fixed for good by its own key.

The unit of assignment. The users' `speaker_id` is a diarisation label, unique only within one
recording (`SPEAKER_00` is in every file), so by default the unit is the source recording: all of
a recording's rows go to one split, and every labelled speaker of it with them. Where transcripts
carry speaker ids that are global across recordings, `global_speakers` (a regex) says which ids
those are: a row whose speaker_id matches it (in full) goes by the speaker instead, so all of
that speaker's rows, in every recording and channel, go to one split. Any other id of such a
recording (`UNKNOWN`, `SPEAKER_01`) still goes by its recording.

The assignment is a stable hash: u = the first 8 bytes of sha256("neutts-split-v1", unit key) as a
fraction in [0, 1); u < validation_fraction is `validation`, u >= 1 - test_fraction is `test`,
else `train`. A unit's split depends on its key and the two fractions only, so
adding recordings or channels never moves a unit to another split. Raising a fraction moves only
units into the split that grew (u is fixed, the threshold moves).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property

from neutts_assets.pipeline.inventory.source_layout import recording_of

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)  # the order of shards and of the card
_SALT = b"neutts-split-v1"


class SplitSettingsError(ValueError):
    """Fractions or a pattern that cannot make a split; the message names the setting."""


def unit_fraction(key: str) -> float:
    """The unit's fixed point in [0, 1)."""
    digest = hashlib.sha256(_SALT + b"\x00" + key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class SplitRule:
    validation_fraction: float = 0.05
    test_fraction: float = 0.0
    global_speakers: str = ""  # a regex of speaker ids that are global across recordings; empty: none are

    def __post_init__(self):
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise SplitSettingsError(f"{name} = {value}: expected a fraction in [0, 1)")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise SplitSettingsError(
                f"validation_fraction + test_fraction = {self.validation_fraction + self.test_fraction}: "
                "nothing would be left for train"
            )
        if self.global_speakers:
            try:
                re.compile(self.global_speakers)
            except re.error as exc:
                raise SplitSettingsError(f"global_speakers {self.global_speakers!r} is not a regex: {exc}") from None

    @cached_property
    def _pattern(self) -> re.Pattern | None:
        return re.compile(self.global_speakers) if self.global_speakers else None

    def unit(self, channel: str, audio_id: str, speaker_id: str) -> str:
        """The key the row is assigned by: its global speaker, or its recording."""
        # An empty id is no speaker, whatever the pattern matches: it stays with its recording.
        if speaker_id and self._pattern is not None and self._pattern.fullmatch(speaker_id):
            return f"speaker:{speaker_id}"
        return f"recording:{channel}/{recording_of(audio_id)}"

    def split_of_unit(self, unit: str) -> str:
        # validation from the bottom of [0, 1), test from the top: raising either moves units only
        # out of train into it, never from the other.
        u = unit_fraction(unit)
        if u < self.validation_fraction:
            return VALIDATION
        if u >= 1.0 - self.test_fraction:
            return TEST
        return TRAIN

    def split(self, channel: str, audio_id: str, speaker_id: str) -> str:
        return self.split_of_unit(self.unit(channel, audio_id, speaker_id))

    def splits(self) -> tuple[str, ...]:
        """The splits this rule can give, in order."""
        return tuple(
            s
            for s in SPLITS
            if s == TRAIN or (s == VALIDATION and self.validation_fraction) or (s == TEST and self.test_fraction)
        )

    def fingerprint(self) -> dict:
        return {
            "validation_fraction": self.validation_fraction,
            "test_fraction": self.test_fraction,
            "global_speakers": self.global_speakers,
            "salt": _SALT.decode(),
        }
