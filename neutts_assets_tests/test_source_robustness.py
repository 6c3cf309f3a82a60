"""The pure rules behind source robustness, without a run: which audio object is cut, what a
recording gone from the source loses, how a channel's folders are found, and how a capped table
keeps every recording's share. The end-to-end cases are in test_bad_input_corpus.py."""

from __future__ import annotations

import unicodedata

import pytest

from neutts_assets.defs.metadata import MAX_TABLE_ROWS, grouped_tables
from neutts_assets.pipeline.inventory.manifest import AudioObject, InventoryEntry, build_inventory
from neutts_assets.pipeline.inventory.source_folders import ChannelNotFound, list_channel, near_matches
from neutts_assets.pipeline.inventory.source_layout import ChannelLayout
from neutts_assets.pipeline.segments.audio_choice import COVER_SLACK_S, Tried, choose, done_trying
from neutts_assets.pipeline.segments.cutting import CutRules
from neutts_assets.pipeline.segments.recordings import fingerprint, gone_keys, same_inputs
from neutts_assets.pipeline.segments.store import RecordingIndex, SegmentEntry, index_key
from neutts_assets.storage.local import LocalStore
from neutts_assets.storage.store import ObjectInfo


def test_the_first_copy_that_covers_the_transcript_is_used():
    pick, why = choose([Tried("r.wav", 7.1)], 6.8, 2)
    assert pick == 0 and "the first of 2 audio objects" in why
    assert done_trying(Tried("r.wav", 7.1), 6.8) and not done_trying(Tried("r.wav", 2.5), 6.8)


def test_an_undecodable_or_short_copy_never_wins():
    tried = [Tried("r.wav", None, "ffmpeg cannot decode it"), Tried("r.mp3", 7.0)]
    pick, why = choose(tried, 6.8, 2)
    assert pick == 1 and "r.wav cannot be used: ffmpeg cannot decode it" in why
    pick, why = choose([Tried("r.wav", 2.5), Tried("r.flac", 7.1)], 6.8, 2)
    assert pick == 1 and "r.wav is much shorter than the transcript needs (2.5 s of audio" in why


def test_with_no_covering_copy_the_longest_is_used_and_near_ties_keep_the_order():
    pick, why = choose([Tried("a.wav", 1.5), Tried("a.mp3", 5.0), Tried("a.ogg", 3.0)], 6.8, 3)
    assert pick == 1 and "no copy covers the transcript" in why
    # within COVER_SLACK_S of the longest: the earlier one in order (codec padding does not decide)
    pick, _ = choose([Tried("b.wav", 5.0), Tried("b.mp3", 5.0 + COVER_SLACK_S / 2)], 9.0, 2)
    assert pick == 0


def test_no_usable_copy_names_every_one():
    pick, why = choose([Tried("c.wav", None, "permission denied"), Tried("c.mp3", None, "no audio stream")], 5, 2)
    assert pick is None and "c.wav: permission denied" in why and "c.mp3: no audio stream" in why


def _index(rid: str, n: int) -> RecordingIndex:
    segs = [SegmentEntry(f"stage1/ch/{rid}_seg_{i}.npz", f"{rid}_seg_{i}", i, 1.0, 10, "S") for i in range(n)]
    return RecordingIndex(rid, "ok", {}, segs)


def test_a_recording_gone_from_the_source_loses_its_files_then_its_index():
    indexes = {"gone": _index("gone", 2), "kept": _index("kept", 1)}
    stored = {
        "gone": {"stage1/ch/gone_seg_0.npz", "stage1/ch/gone_seg_5.npz"},  # seg_5: a killed cut's leftover
        "kept": {"stage1/ch/kept_seg_0.npz"},
        "unindexed": {"stage1/ch/unindexed_seg_0.npz"},  # cut killed before its index, then deleted
    }
    out = gone_keys("ch", ["gone"], indexes, stored, {"kept"})
    assert out == {
        "gone": [
            "stage1/ch/gone_seg_0.npz",
            "stage1/ch/gone_seg_1.npz",
            "stage1/ch/gone_seg_5.npz",
            index_key("ch", "gone"),
        ],
        "unindexed": ["stage1/ch/unindexed_seg_0.npz"],
    }
    assert gone_keys("ch", [], indexes, {"kept": stored["kept"]}, {"kept"}) == {}


def test_a_capped_table_keeps_every_recordings_share():
    rows = [(f"big_seg_{i}", "empty text") for i in range(1000)] + [("small_seg_0", "shorter than 0.3 s")]
    tables = grouped_tables("skipped", ["segment", "reason"], rows, "segments skipped", reason=lambda r: r[1])
    assert list(tables) == ["skipped_by_recording", "skipped"]  # the counts first
    summary = [r.data for r in tables["skipped_by_recording"].records]
    assert summary == [
        {"recording": "big", "segments skipped": 1000, "reasons": "empty text ×1000"},
        {"recording": "small", "segments skipped": 1, "reasons": "shorter than 0.3 s ×1"},
    ]
    detail = [r.data["segment"] for r in tables["skipped"].records]
    assert len(detail) == MAX_TABLE_ROWS and "small_seg_0" in detail
    assert "1001 rows" in tables["skipped"].schema.columns[0].description


def _source(tmp_path, keys: list[str]) -> LocalStore:
    store = LocalStore(tmp_path / "src")
    for key in keys:
        store.write_bytes(key, b"x")
    return store


def test_a_channel_folder_in_the_other_normal_form_is_used(tmp_path):
    nfc = unicodedata.normalize("NFC", "قناةُ_é")
    nfd = unicodedata.normalize("NFD", nfc)
    store = _source(tmp_path, [f"processed_runs/processed_{nfd}/transcripts/audio_r.json", f"{nfd}/audio/r.wav"])
    found = list_channel(store, ChannelLayout.for_channel(nfc))
    assert found.layout.source_channel == nfd and found.layout.audio_folder == nfd and found.layout.channel == nfc
    assert len(found.transcripts) == 1 and len(found.audio) == 1 and len(found.notes) == 2


def test_an_empty_channel_is_refused_naming_where_it_looked_and_the_near_matches(tmp_path):
    store = _source(tmp_path, ["processed_runs/processed_News_TV/transcripts/audio_r.json", "news_tv/Audio/r.wav"])
    with pytest.raises(ChannelNotFound) as err:
        list_channel(store, ChannelLayout.for_channel("news_tv"))
    text = str(err.value)
    assert "has nothing in the source" in text and "processed_runs/processed_news_tv/transcripts/" in text
    assert "processed_runs/processed_News_TV/" in text  # a near-matching transcripts folder
    assert "news_tv/ holds 'Audio', not 'audio'" in text


def test_transcripts_without_any_audio_are_refused(tmp_path):
    store = _source(tmp_path, ["processed_runs/processed_ch/transcripts/audio_r.json", "other/audio/r.wav"])
    with pytest.raises(ChannelNotFound, match="1 transcripts and no audio"):
        list_channel(store, ChannelLayout.for_channel("ch"))


def test_near_matches():
    assert near_matches("processed_news", ["processed_News", "processed_new", "unrelated"]) == [
        "processed_News",
        "processed_new",
    ]
    assert near_matches("x", ["x"]) == []


def _obj(key: str) -> ObjectInfo:
    return ObjectInfo(key, 10, "v")


def test_ids_in_other_normal_forms_are_paired_only_when_unclaimed():
    layout = ChannelLayout.for_channel("ch")
    nfc, nfd = (unicodedata.normalize(f, "café") for f in ("NFC", "NFD"))
    t = lambda rid: _obj(f"{layout.transcripts_prefix}audio_{rid}.json")  # noqa: E731
    a = lambda name: _obj(f"{layout.audio_prefix}{name}")  # noqa: E731
    inv = build_inventory(layout, [t(nfc)], [a(f"{nfd}.wav")], read=lambda k: b"[]")
    assert [(e.recording_id, e.audio_key) for e in inv.entries] == [(nfc, a(f"{nfd}.wav").key)]
    assert inv.notes and "different Unicode normal forms" in inv.notes[0].note and not inv.unpaired
    # both spellings have transcripts: each keeps its own audio, none is borrowed
    inv = build_inventory(layout, [t(nfc), t(nfd)], [a(f"{nfd}.wav")], read=lambda k: b"[]")
    assert [e.recording_id for e in inv.entries] == [nfd] and not inv.notes
    (missing,) = inv.unpaired
    assert missing.kind == "transcript_without_audio" and "near match" in missing.reason


def _entry(alternates=(), version="1700000000000000000-100-42-1700000000000000001") -> InventoryEntry:
    return InventoryEntry(
        "r", "t/audio_r.json", "1", 10, "sha", "a/audio/r.wav", version, 100, ".wav", False, tuple(alternates)
    )


def test_an_index_from_before_file_identity_is_not_cut_again():
    """A local version written as `mtime-size` (before sources were listed with inode and ctime)
    matches today's `mtime-size-inode-ctime` of the same file; another mtime does not."""
    rules = CutRules()
    entry = _entry()
    old = RecordingIndex("r", "ok", {**fingerprint(entry, rules), "audio_version": "1700000000000000000-100"})
    assert same_inputs(old, entry, rules)
    old.fingerprint["audio_version"] = "1700000000000000999-100"
    assert not same_inputs(old, entry, rules)


def test_copies_after_the_one_that_covered_do_not_re_cut():
    """A .part still growing beside a complete .wav that was used: no re-cut; a change to a copy
    that was tried (or a copy tried only because none covered) is one."""
    rules = CutRules()
    part = lambda size: AudioObject("a/audio/r.webm.part", f"v{size}", size, ".webm", True)  # noqa: E731
    cut_under = _entry([part(10)])
    old = RecordingIndex(
        "r", "ok", fingerprint(cut_under, rules), audio_tried=[["a/audio/r.wav", cut_under.audio_version, 100]]
    )
    assert same_inputs(old, _entry([part(20)]), rules)
    assert not same_inputs(old, _entry([part(20)], version="1700000000000000000-100-43-1"), rules)
    old.audio_tried = []  # every copy was tried: each counts
    assert not same_inputs(old, _entry([part(20)]), rules)
