"""Labels and text that training can trust, and channel names that cannot break a glob, a path or the card.

- a label that is not a JSON string follows one rule (pipeline/inventory/transcripts.py), never Python's repr;
- text that shows nothing (only zero-width or direction marks) is skipped as empty text;
- a channel name with characters special to globs, paths or the dataset card is refused by
  add-channel, skipped by the new-audio sensor, and fails segments_npz before anything is written.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from dagster import DagsterInstance, Failure, build_asset_context, instance_for_test

from neutts_assets import read_segment
from neutts_assets.cli import main as cli_main
from neutts_assets.defs.resources import SegmentStore, SourceBucket
from neutts_assets.defs.segments.segments_npz import SegmentsConfig, segments_npz
from neutts_assets.pipeline.inventory.manifest import Inventory
from neutts_assets.pipeline.inventory.source_layout import (
    CHANNEL_SPECIAL_CHARACTERS,
    ChannelLayout,
    UnsafeNameError,
    check_channel_name,
    check_name,
)
from neutts_assets.pipeline.inventory.source_watch import changed_channels
from neutts_assets.pipeline.inventory.transcripts import DEFAULT_LABELS, is_visibly_empty, parse_transcript
from neutts_assets.pipeline.segments.cutting import CutRules, StreamCutter
from neutts_assets.storage.local import LocalStore
from neutts_assets_tests.helpers import (
    DEMO_IDS,
    asset_metadata,
    audio_key,
    clean_env,
    demo_audio,
    make_resources,
    populate_source,
    run_stage1,
    transcript_key,
)
from neutts_assets_tests.test_new_audio_sensor import MAPPING, Watcher, runs

RLM, ZWSP = "\u200f", "\u200b"


def _parse(*segments: dict):
    return parse_transcript(json.dumps(list(segments)).encode(), "t.json")


def _seg(**labels) -> dict:
    return {"start_ms": 0, "end_ms": 1000, "text": "hello", **labels}


# --- labels -------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", sorted(DEFAULT_LABELS))
@pytest.mark.parametrize(
    "value, expected",
    [
        (42, "42"),
        (42.0, "42"),
        (-3, "-3"),
        (0, "0"),
        (-0.0, "0"),
        (1e15, "1000000000000000"),
        (2**53, str(2**53)),
        (12345678901234567890, "12345678901234567890"),  # JSON ints are exact at any size
        ("42", "42"),
        ("42.0", "42.0"),
        (" SPEAKER_01 ", "SPEAKER_01"),
        ("خليجي", "خليجي"),
    ],
)
def test_label_conversion_table(field, value, expected):
    (s,), problems = _parse(_seg(**{field: value}))
    assert problems == [] and getattr(s, field) == expected
    converted = not isinstance(value, str)
    assert bool([n for n in s.notes if n.startswith(f"{field}: number")]) == converted


@pytest.mark.parametrize("field", sorted(DEFAULT_LABELS))
@pytest.mark.parametrize("value", [None, "", "   ", "\u200b\u200f", "MISSING"])
def test_null_missing_and_blank_labels_get_the_default(field, value):
    (s,), problems = _parse(_seg() if value == "MISSING" else _seg(**{field: value}))
    assert problems == [] and getattr(s, field) == DEFAULT_LABELS[field]


@pytest.mark.parametrize("field", sorted(DEFAULT_LABELS))
@pytest.mark.parametrize(
    "value, words",
    [
        (True, "boolean (True)"),
        (False, "boolean (False)"),
        (42.5, "fraction (42.5)"),
        (0.1, "fraction (0.1)"),
        (1e300, "too large"),
        (2.0**53 * 4, "too large"),
        ([1, 2], "list ([1, 2])"),
        ({"id": 7}, "JSON object ({'id': 7})"),
        (["x" * 100], "list (['xxxxxxxxx"),
    ],
)
def test_labels_without_one_spelling_refuse_the_segment(field, value, words):
    good = {"start_ms": 2000, "end_ms": 3000, "text": "kept"}
    segments, problems = _parse(_seg(**{field: value}), good)
    assert [s.index for s in segments] == [1]  # the rest of the transcript is used
    (p,) = problems
    assert p.index == 0 and p.kind == "bad label"
    assert p.reason.startswith(f"{field} is ") and words in p.reason and len(p.reason) < 120  # the value is shortened


def test_non_finite_numbers_cannot_reach_a_label():
    # json.dumps writes NaN / Infinity, which Python's json reads back as floats
    for raw in (
        b'[{"start_ms": 0, "end_ms": 1000, "text": "x", "speaker_id": NaN}]',
        b'[{"start_ms": 0, "end_ms": 1000, "text": "x", "tone": -Infinity}]',
    ):
        segments, (p,) = parse_transcript(raw, "t.json")
        assert segments == [] and p.kind == "bad label" and "not finite" in p.reason


def test_42_and_42_point_0_are_one_speaker_and_the_string_42_0_is_another():
    segs, problems = _parse(
        _seg(speaker_id=42),
        {**_seg(speaker_id=42.0), "text": "b"},
        {**_seg(speaker_id="42"), "text": "c"},
        {**_seg(speaker_id="42.0"), "text": "d"},
    )
    assert problems == []
    assert [s.speaker_id for s in segs] == ["42", "42", "42", "42.0"]


def test_notes_list_every_conversion_in_field_order():
    (s,), _ = _parse(_seg(speaker_id=42.0, gender="male", dialect=7, tone=None))
    assert s.notes == ("speaker_id: number 42.0 written as '42'", "dialect: number 7 written as '7'")
    (s,), _ = _parse(_seg(speaker_id="S1", gender=ZWSP))
    assert s.gender == "unknown" and s.notes == (
        "gender: only invisible characters (U+200B), written as the default 'unknown'",
    )
    (s,), _ = _parse(_seg(speaker_id="S1"))
    assert s.notes == ()


def test_a_refused_segment_is_no_original_for_a_later_copy():
    segs, (p,) = _parse(_seg(speaker_id=True), _seg(speaker_id="S1"))
    assert [(s.index, s.speaker_id) for s in segs] == [(1, "S1")] and p.kind == "bad label"


# --- visibly empty text ------------------------------------------------------------------------

INVISIBLE = [
    "\u200b",
    "\u200c",
    "\u200d",
    "\u200e",
    "\u200f",
    "\u061c",
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
    "\u2060",
    "\ufeff",
    "\u00ad",
    "\u2028",
    "\u3000",
    "\u00a0",
    "\t",
    "\u3164",
    "\ufe0f",
    "\U000e0001",
]


@pytest.mark.parametrize("c", INVISIBLE)
def test_each_invisible_character_alone_is_visibly_empty(c):
    assert is_visibly_empty(c) and is_visibly_empty(c * 3 + " " + RLM)
    assert not is_visibly_empty(c + "a") and not is_visibly_empty(RLM + "مرحبا" + c)


@pytest.mark.parametrize("text", ["a", "مرحبا", "١", ".", "\u064e", "😀", "-"])
def test_visible_text_is_not_empty(text):
    assert not is_visibly_empty(text)


def _cut_skips(segments):
    cutter = StreamCutter(segments, 16000, CutRules())
    cutter.feed(np.zeros(16000 * 10, dtype=np.int16))
    cutter.finish()
    return {s.index: s for s in cutter.skips}


def test_invisible_only_text_is_skipped_exactly_as_empty_text():
    text_rlm = RLM + "مرحبا" + ZWSP + " بكم"
    segments, problems = _parse(
        {"start_ms": 0, "end_ms": 1000, "text": ""},
        {"start_ms": 1000, "end_ms": 2000, "text": ZWSP + "\u200c\u200d" + RLM},
        {"start_ms": 2000, "end_ms": 3000, "text": " \ufeff\u2066\u2069\u00ad "},
        {"start_ms": 3000, "end_ms": 4000, "text": text_rlm},
    )
    assert problems == []
    skips = _cut_skips(segments)
    assert sorted(skips) == [0, 1, 2]
    assert {s.reason for s in skips.values()} == {"empty text"}  # counted under the same reason
    assert skips[0].detail == "" and "U+200B" in skips[1].detail and "U+FEFF" in skips[2].detail
    assert segments[3].text == text_rlm  # kept with its marks, byte for byte
    # with the rule off, nothing is skipped for its text
    cutter = StreamCutter(segments, 16000, CutRules(skip_empty_text=False))
    cuts = cutter.feed(np.zeros(16000 * 10, dtype=np.int16)) + cutter.finish()
    assert [c.segment.index for c, _ in cuts] == [0, 1, 2, 3] and cutter.skips == []


# --- channel names -----------------------------------------------------------------------------

SPECIAL = list("[]*?{},!#|:\"'\\") + [
    "\n",
    "\r",
    "\t",
    "\x00",
    "\x1b",
    "\x7f",
    "\x85",
    "\u200f",
    "\u2028",
    "\u00a0",
    "`",
    "<",
    ">",
]
BAD_CHANNELS = [f"chan{c}nel" for c in SPECIAL] + [
    " lead",
    "trail ",
    " ",
    "",
    "..",
    "a..b",
    ".hidden",
    "a/b",
    "x" * 201,
    "a[0-9]",
    "{a,b}",
    "a: b",
    "# title",
    "a|b",
    "all",
    "text_codes",
    "ALL",
]  # the card's own configs
GOOD_CHANNELS = [
    "Atheer_-",
    "ZadTVchannel",
    "demo_librivox",
    "Atheer - أثير",
    "قناة الجزيرة",
    "a.b",
    "my-channel_2",
    "x" * 200,
    "all_news",
    "text_codes2",
]


def test_every_listed_special_character_is_in_the_rule():
    assert set("[]*?{},!#|:\"'\\") <= set(CHANNEL_SPECIAL_CHARACTERS)


@pytest.mark.parametrize("name", BAD_CHANNELS)
def test_bad_channel_names_are_refused(name):
    with pytest.raises(UnsafeNameError) as info:
        check_channel_name(name)
    assert str(info.value).startswith("channel ")
    with pytest.raises(UnsafeNameError):
        ChannelLayout.for_channel(name)


@pytest.mark.parametrize("name", GOOD_CHANNELS)
def test_good_channel_names_are_accepted(name):
    assert check_channel_name(name) == name
    assert ChannelLayout.for_channel(name).channel == name


def test_folders_and_recording_ids_keep_the_looser_rule():
    # the channel rule is for channels: audio folders and recording IDs may hold these
    for name in ["Atheer - أثير", "clip [1]", "a,b", "it's", "x:y", " padded "]:
        assert check_name(name, "recording ID") == name
    assert ChannelLayout.for_channel("ok", {"ok": "Folder [2024], 'old'"}).audio_folder == "Folder [2024], 'old'"


@pytest.mark.parametrize("name", BAD_CHANNELS[:20] + ["a..b", " lead", "trail "])
def test_add_channel_refuses_the_name_with_a_message(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert cli_main(["add-channel", "good_one", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: channel ") and repr(name) in err and "no channel added" in err
    assert not (tmp_path / "storage").exists()  # refused before the instance was even opened


def test_add_channel_command_refuses_a_glob_name_and_adds_nothing(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = clean_env(DAGSTER_HOME=str(home))
    exe = [sys.executable, "-m", "neutts_assets"]
    proc = subprocess.run(
        [*exe, "add-channel", "good_one", "bad[1]"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and "'bad[1]'" in proc.stderr and "'['" in proc.stderr, proc.stderr[-2000:]
    proc = subprocess.run(
        [*exe, "add-channel", "good_one", "Atheer_-"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with DagsterInstance.from_config(str(home)) as instance:
        assert sorted(instance.get_dynamic_partitions("channels")) == ["Atheer_-", "good_one"]


def test_changed_channels_skips_bad_names_and_keeps_the_others():
    report = changed_channels([], channels=["good", "bad*", "a|b"], known_partitions=[], mapping={})
    assert [c.channel for c in report.changes] == ["good"]
    assert sorted(report.rejected_channels) == ["a|b", "bad*"]
    text = report.describe()
    assert "channel 'bad*' skipped (no partition, no run): channel 'bad*' contains '*'" in text


@pytest.fixture
def instance():
    with instance_for_test() as inst:
        yield inst


def test_sensor_skips_a_bad_channel_folder_and_still_handles_a_good_one(instance, gcs_store, gcs_bucket):
    bad = ["bad[1]", "glob*", "card: x", "it's"]
    for name in bad:
        populate_source(gcs_store, name, ids=DEMO_IDS[:1])
    w = Watcher(instance, gcs_bucket)
    only_bad = w.tick()
    assert only_bad.run_requests == [] and only_bad.dynamic_partitions_requests == []
    message = only_bad.skip_reason.skip_message
    for name in bad:
        assert f"channel {name!r} skipped (no partition, no run)" in message
    assert "characters special to globs, paths or the dataset card" in message

    populate_source(gcs_store, "Atheer_-", MAPPING["Atheer_-"], ids=DEMO_IDS[:1])
    gcs_store.write_bytes(
        audio_key("bad[1]", "late" + demo_audio(DEMO_IDS[1]).suffix), demo_audio(DEMO_IDS[1]).read_bytes()
    )
    result = w.tick()
    assert runs(result).keys() == {"Atheer_-"}
    assert instance.get_dynamic_partitions("channels") == ["Atheer_-"]
    assert (
        "1 new or changed transcript(s), 1 new or changed audio object(s)"
        in result.run_requests[0].tags["neutts/sensor-found"]
    )


# --- stage 1 -----------------------------------------------------------------------------------


def test_segments_npz_fails_a_bad_partition_before_writing_anything(tmp_path):
    store_root = tmp_path / "store"
    store_root.mkdir()
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("channels", ["bad[1]"])
        ctx = build_asset_context(
            partition_key="bad[1]",
            instance=instance,
            resources={"source": SourceBucket(url=str(tmp_path / "src")), "store": SegmentStore(url=str(store_root))},
        )
        with pytest.raises(Failure) as info:
            segments_npz(ctx, config=SegmentsConfig(), raw_audio=Inventory(channel="bad[1]", audio_folder="bad[1]"))
    assert "channel 'bad[1]' cannot be processed" in info.value.description and "'['" in info.value.description
    assert list(LocalStore(store_root).list("")) == []


def test_a_stage1_run_of_a_bad_partition_fails_and_writes_nothing(tmp_path):
    src, dst = LocalStore(tmp_path / "src"), tmp_path / "store"
    populate_source(src, "a,b", ids=DEMO_IDS[:1])
    with instance_for_test() as instance:
        result = run_stage1(instance, make_resources(str(tmp_path / "src"), str(dst)), "a,b", raise_on_error=False)
        assert not result.success
        errors = [str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure]
        assert errors and "channel 'a,b' contains ','" in errors[0]
    assert not dst.exists() or list(LocalStore(dst).list("")) == []


def test_stage1_writes_numeric_speaker_ids_as_one_speaker_and_notes_it(tmp_path, ffmpeg):
    rec = DEMO_IDS[0]  # austen_0870: about 7 s of speech
    arabic = RLM + "مرحبا" + ZWSP + " بكم" + RLM
    transcript = [
        {"start_ms": 200, "end_ms": 2210, "text": "and mister john dashwood had then", "speaker_id": 42},
        {"start_ms": 2250, "end_ms": 3950, "text": "leisure to consider how", "speaker_id": 42.0, "dialect": 3},
        {"start_ms": 4000, "end_ms": 5000, "text": ZWSP + RLM + "\u2066\u2069", "speaker_id": 42},
        {"start_ms": 5000, "end_ms": 6000, "text": arabic, "speaker_id": "42"},
        {"start_ms": 6000, "end_ms": 6790, "text": "them", "speaker_id": True},
    ]
    src = LocalStore(tmp_path / "src")
    src.write_bytes(transcript_key("ch", rec), json.dumps(transcript).encode())
    src.write_bytes(audio_key("ch", demo_audio(rec).name), demo_audio(rec).read_bytes())
    with instance_for_test() as instance:
        result = run_stage1(instance, make_resources(str(tmp_path / "src"), str(tmp_path / "store")), "ch")
        meta = asset_metadata(result, "segments_npz")

    store = LocalStore(tmp_path / "store")
    segs = {i: read_segment(store.read_bytes(f"stage1/ch/{rec}_seg_{i}.npz")) for i in (0, 1, 3)}
    assert [segs[i].speaker_id for i in (0, 1, 3)] == ["42", "42", "42"]
    assert segs[1].dialect == "3"
    assert segs[3].text.encode() == arabic.encode()  # visible text keeps its marks byte for byte
    assert not any(o.key.endswith(("_seg_2.npz", "_seg_4.npz")) for o in store.list("stage1/ch/"))
    assert meta["segments_written"] == 3 and meta["segments_skipped"] == 2

    notes = {(r["segment or object"], r["note"]) for r in meta["input_notes"]}
    assert (f"{rec}_seg_1", "speaker_id: number 42.0 written as '42'") in notes
    assert (f"{rec}_seg_0", "speaker_id: number 42 written as '42'") in notes
    assert (f"{rec}_seg_1", "dialect: number 3 written as '3'") in notes
    skipped = {r["segment"]: r for r in meta["skipped_segments"]}
    assert skipped[f"{rec}_seg_2"]["reason"] == "empty text"
    assert skipped[f"{rec}_seg_2"]["detail"].startswith("only invisible characters:")
    assert skipped[f"{rec}_seg_4"]["reason"] == "bad label"
    assert skipped[f"{rec}_seg_4"]["detail"].startswith("speaker_id is a boolean (True)")
    per_reason = {r["reason"]: r["segments"] for r in meta["skip_reasons"]}
    assert per_reason["empty text"] == 1 and per_reason["bad label"] == 1


# --- the dataset card --------------------------------------------------------------------------


def test_the_card_lists_no_config_for_a_bad_channel_and_stays_loadable_for_the_others():
    from neutts_assets.pipeline.dataset.card import ALL_CONFIG, TEXT_CODES_CONFIG, _configs_yaml

    def record(channel):
        return {
            "channel": channel,
            "shards": [{"path": f"data/{channel}/part-0.parquet", "bytes": 10}],
            "stats": {"rows": 3},
        }

    records = [
        record("Atheer_-"),
        record("bad: [x]"),
        record("a|b"),
        record("قناة"),
        record("all"),
        record("text_codes"),
    ]
    foreign = {  # parts by split, as foreign_configs reads them off the Hub's card
        "other": {"train": {"paths": ["data/other/p.parquet"], "num_examples": 1, "num_bytes": 5}},
        "also*bad": {"train": {"paths": ["data/also*bad/p.parquet"], "num_examples": 1, "num_bytes": 5}},
    }
    configs, infos = _configs_yaml(records, foreign)
    assert sorted(configs) == sorted([ALL_CONFIG, TEXT_CODES_CONFIG, "Atheer_-", "other", "قناة"]) == sorted(infos)
    (split,) = configs[ALL_CONFIG]["data_files"]
    assert split["path"] == ["data/Atheer_-/part-0.parquet", "data/other/p.parquet", "data/قناة/part-0.parquet"]
