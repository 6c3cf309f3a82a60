"""The speaker-disjoint, stable split (pipeline/dataset/splits.py): pure rules here; the dataset's
splits end to end are in test_quality_and_lineage.py."""

from __future__ import annotations

import pytest

from neutts_assets.pipeline.dataset.splits import TEST, TRAIN, VALIDATION, SplitRule, SplitSettingsError


def _rows(channel: str, recordings: int, speakers=("SPEAKER_00", "SPEAKER_01", "UNKNOWN"), start: int = 0):
    return [
        (channel, f"rec{r:04d}_seg_{i}", speakers[i % len(speakers)])
        for r in range(start, start + recordings)
        for i in range(4)
    ]


def _assign(rule: SplitRule, rows) -> dict:
    return {(c, a): rule.split(c, a, s) for c, a, s in rows}


def test_adding_recordings_and_channels_never_moves_a_row():
    rule = SplitRule(validation_fraction=0.1, test_fraction=0.05)
    before = _assign(rule, _rows("A", 500))
    grown = _rows("A", 500) + _rows("A", 700, start=500) + _rows("B", 300)
    after = _assign(rule, grown)
    assert {k: after[k] for k in before} == before
    # The same rule object or a new one, in any order of rows: the same answer.
    assert _assign(SplitRule(0.1, 0.05), reversed(grown)) == after


def test_whole_recordings_go_to_one_split_and_fractions_are_met():
    rule = SplitRule(validation_fraction=0.1, test_fraction=0.05)
    rows = _rows("A", 4000)
    splits = _assign(rule, rows)
    by_recording: dict[str, set] = {}
    for (_, audio_id), split in splits.items():
        by_recording.setdefault(audio_id.rsplit("_seg_", 1)[0], set()).add(split)
    assert all(len(s) == 1 for s in by_recording.values())  # every labelled speaker of a recording with it
    counts = {s: sum(1 for v in by_recording.values() if v == {s}) for s in (TRAIN, VALIDATION, TEST)}
    assert abs(counts[VALIDATION] / 4000 - 0.1) < 0.02 and abs(counts[TEST] / 4000 - 0.05) < 0.015
    # the same recording ID in another channel is another unit
    assert rule.unit("A", "x_seg_1", "SPEAKER_00") != rule.unit("B", "x_seg_1", "SPEAKER_00")


def test_raising_a_fraction_moves_units_only_into_that_split():
    rows = _rows("A", 2000)
    small, large = _assign(SplitRule(0.05), rows), _assign(SplitRule(0.2), rows)
    moved = {k for k in small if small[k] != large[k]}
    assert moved and all(small[k] == TRAIN and large[k] == VALIDATION for k in moved)
    assert SplitRule(0.0).splits() == (TRAIN,) and SplitRule(0.1, 0.1).splits() == (TRAIN, VALIDATION, TEST)


def test_global_speakers_keep_each_speaker_in_one_split_across_recordings():
    rule = SplitRule(validation_fraction=0.3, global_speakers=r"spk-\d+")
    rows = []
    for r in range(300):  # speakers shared between recordings and channels, plus per-recording labels
        for i, speaker in enumerate((f"spk-{r % 37}", f"spk-{(r * 7) % 37}", "SPEAKER_00", "UNKNOWN")):
            rows.append(("A" if r % 2 else "B", f"rec{r}_seg_{i}", speaker))
    splits = _assign(rule, rows)
    by_speaker: dict[str, set] = {}
    for (channel, audio_id), split in splits.items():
        speaker = next(s for c, a, s in rows if (c, a) == (channel, audio_id))
        key = speaker if speaker.startswith("spk-") else f"{channel}/{audio_id.rsplit('_seg_', 1)[0]}/{speaker}"
        by_speaker.setdefault(key, set()).add(split)
    assert all(len(s) == 1 for s in by_speaker.values())  # no speaker in two splits
    assert {s for v in by_speaker.values() for s in v} == {TRAIN, VALIDATION}
    # An id that only looks like a global one in part is not one (full match), nor is UNKNOWN.
    assert rule.unit("A", "r_seg_0", "xspk-1") == rule.unit("A", "r_seg_1", "UNKNOWN") == "recording:A/r"
    assert rule.unit("A", "r_seg_0", "spk-1") == rule.unit("B", "q_seg_3", "spk-1") == "speaker:spk-1"


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"validation_fraction": -0.1}, "validation_fraction"),
        ({"validation_fraction": 0.6, "test_fraction": 0.4}, "nothing would be left for train"),
        ({"global_speakers": "spk-("}, "not a regex"),
    ],
)
def test_settings_that_cannot_split_fail_naming_the_setting(kwargs, words):
    with pytest.raises(SplitSettingsError, match=words):
        SplitRule(**kwargs)


def test_raising_the_test_fraction_never_moves_a_validation_unit():
    rows = _rows("A", 3000)
    before, after = _assign(SplitRule(0.05, 0.0), rows), _assign(SplitRule(0.05, 0.05), rows)
    moved = {k for k in before if before[k] != after[k]}
    assert moved and all(before[k] == TRAIN and after[k] == TEST for k in moved)
    assert all(after[k] == VALIDATION for k in before if before[k] == VALIDATION)


def test_an_empty_speaker_id_is_no_global_speaker():
    rule = SplitRule(0.5, global_speakers=".*")
    assert rule.unit("A", "r_seg_0", "") == "recording:A/r" and rule.unit("A", "r_seg_0", "x") == "speaker:x"
