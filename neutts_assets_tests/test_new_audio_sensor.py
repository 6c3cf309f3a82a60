"""The new-audio sensor against the GCS emulator (fake-gcs-server), evaluated with a real instance.

Each tick is applied the way the daemon applies it: partitions the sensor adds are added to the
instance, and the next tick gets the cursor the last one returned.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from dagster import SensorResult, build_sensor_context, instance_for_test

from neutts_assets.defs.inventory.sensors import FOUND_TAG, SourceWatchSettings, new_audio_sensor
from neutts_assets.defs.resources import ChannelSettings, SourceBucket
from neutts_assets.pipeline.inventory.source_watch import WatchCursor, changed_channels, new_objects
from neutts_assets.storage.store import ObjectInfo
from neutts_assets_tests.helpers import DEMO_IDS, audio_key, demo_audio, populate_source, transcript_key

MAPPING = {"Atheer_-": "Atheer - أثير"}


@pytest.fixture
def instance():
    with instance_for_test() as inst:
        yield inst


class Watcher:
    """Ticks the sensor like the daemon: carries the cursor, applies partition requests."""

    def __init__(self, instance, bucket: str, channels=()):
        self.instance = instance
        self.resources = {
            "source": SourceBucket(url=f"gs://{bucket}"),
            "channel_settings": ChannelSettings(channel_mapping=MAPPING),
            "watch": SourceWatchSettings(channels=list(channels)),
        }
        self.cursor = None

    def tick(self, cursor: str | None = "carry") -> SensorResult:
        cursor = self.cursor if cursor == "carry" else cursor
        ctx = build_sensor_context(instance=self.instance, cursor=cursor, resources=self.resources)
        result = new_audio_sensor(ctx)
        assert isinstance(result, SensorResult)
        for req in result.dynamic_partitions_requests:
            self.instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        self.cursor = result.cursor
        return result


def runs(result: SensorResult) -> dict[str, str]:
    return {r.partition_key: r.run_key for r in result.run_requests}


def test_new_channel_new_audio_changed_transcript_and_quiet_ticks(instance, gcs_store, gcs_bucket):
    w = Watcher(instance, gcs_bucket)
    assert w.tick().skip_reason is not None  # empty bucket: nothing to do, said so

    # a new channel whose audio folder is mapped (spaces and Arabic in the name)
    populate_source(gcs_store, "Atheer_-", MAPPING["Atheer_-"], ids=DEMO_IDS[:2])
    first = w.tick()
    assert runs(first).keys() == {"Atheer_-"}
    (add,) = first.dynamic_partitions_requests
    assert add.partitions_def_name == "channels" and list(add.partition_keys) == ["Atheer_-"]
    req = first.run_requests[0]
    assert req.tags["machine"] == "t4" and "new channel" in req.tags[FOUND_TAG]
    assert "2 new or changed transcript(s), 2 new or changed audio object(s)" in req.tags[FOUND_TAG]
    assert instance.get_dynamic_partitions("channels") == ["Atheer_-"]

    # nothing changed: no run, and the evaluation says what it looked at
    quiet = w.tick()
    assert quiet.run_requests == [] and "nothing new" in quiet.skip_reason.skip_message
    assert "listed 4 objects" in quiet.skip_reason.skip_message

    # a second channel appears
    populate_source(gcs_store, "ZadTVchannel", ids=DEMO_IDS[2:3])
    second = w.tick()
    assert runs(second).keys() == {"ZadTVchannel"}
    assert sorted(instance.get_dynamic_partitions("channels")) == ["Atheer_-", "ZadTVchannel"]

    # new audio in an old channel: only that channel runs
    new_audio = demo_audio(DEMO_IDS[3])
    gcs_store.write_bytes(audio_key(MAPPING["Atheer_-"], "late_upload" + new_audio.suffix), new_audio.read_bytes())
    third = w.tick()
    assert runs(third).keys() == {"Atheer_-"}
    assert third.dynamic_partitions_requests == []
    assert "0 new or changed transcript(s), 1 new or changed audio object(s)" in third.run_requests[0].tags[FOUND_TAG]

    # a transcript rewritten in place (same name, new generation): only its channel runs
    key = transcript_key("ZadTVchannel", DEMO_IDS[2])
    body = json.loads(gcs_store.read_bytes(key))
    segments = body["segments"] if isinstance(body, dict) else body
    segments[0]["text"] = segments[0]["text"] + " (corrected)"
    gcs_store.write_bytes(key, json.dumps(body).encode())
    before_fourth = w.cursor
    fourth = w.tick()
    assert runs(fourth).keys() == {"ZadTVchannel"}
    assert "1 new or changed transcript(s), 0 new or changed audio object(s)" in fourth.run_requests[0].tags[FOUND_TAG]

    # a restart that lost the last tick's cursor asks for the same run_key, so Dagster starts no second run
    assert runs(w.tick(cursor=before_fourth)) == runs(fourth)
    # a restart with the saved cursor finds nothing new at all
    w.cursor = fourth.cursor
    assert w.tick().run_requests == []
    # and different changes get different keys
    assert runs(third)["Atheer_-"] != runs(first)["Atheer_-"]


def test_allow_list_and_unsafe_channel_names(instance, gcs_store, gcs_bucket):
    populate_source(gcs_store, "wanted", ids=DEMO_IDS[:1])
    populate_source(gcs_store, "other", ids=DEMO_IDS[:1])
    gcs_store.write_bytes("processed_runs/processed_../transcripts/audio_x.json", b"[]")
    w = Watcher(instance, gcs_bucket, channels=["wanted", ".."])
    result = w.tick()
    assert runs(result).keys() == {"wanted"}
    assert instance.get_dynamic_partitions("channels") == ["wanted"]


def test_requests_target_stage1_for_the_channel(instance, gcs_store, gcs_bucket):
    populate_source(gcs_store, "c1", ids=DEMO_IDS[:1])
    (req,) = Watcher(instance, gcs_bucket).tick().run_requests
    assert req.partition_key == "c1" and req.run_key.startswith("c1:")
    assert new_audio_sensor.job_name == "stage1"


# --- the cursor alone (no bucket) ---------------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def obj(key: str, version: str, seconds: float) -> ObjectInfo:
    return ObjectInfo(key=key, size=1, version=version, updated=T0 + timedelta(seconds=seconds))


def test_cursor_catches_an_object_that_shows_up_late_within_the_overlap():
    fresh, cur = new_objects([obj("a", "1", 100)], WatchCursor())
    assert [o.key for o in fresh] == ["a"]
    # "b" finished uploading at t=90 but was not listed at the first tick
    fresh, cur2 = new_objects([obj("a", "1", 100), obj("b", "1", 90)], cur, timedelta(minutes=1))
    assert [o.key for o in fresh] == ["b"]
    assert new_objects([obj("a", "1", 100), obj("b", "1", 90)], cur2, timedelta(minutes=1))[0] == []
    # overwritten: a new generation is new even with an older listing time skew
    assert [o.version for o in new_objects([obj("a", "2", 95)], cur2, timedelta(minutes=1))[0]] == ["2"]


def test_cursor_round_trips_and_forgets_what_is_far_below_the_watermark():
    fresh, cur = new_objects([obj("old", "1", 0), obj("new", "1", 3600)], WatchCursor(), timedelta(minutes=10))
    assert len(fresh) == 2 and len(cur.recent) == 1  # only "new" is within the overlap
    again = WatchCursor.from_json(cur.to_json())
    assert again == cur
    assert new_objects([obj("old", "1", 0), obj("new", "1", 3600)], again, timedelta(minutes=10))[0] == []
    with pytest.raises(ValueError, match="unreadable source-watch cursor"):
        WatchCursor.from_json("{not json")


def test_audio_in_a_shared_folder_belongs_to_every_channel_that_maps_to_it():
    report = changed_channels(
        [obj("shared/audio/x.wav", "1", 1), obj("elsewhere/file.txt", "1", 1)],
        channels=["a", "b"],
        known_partitions=["a", "b"],
        mapping={"a": "shared", "b": "shared"},
    )
    assert [c.channel for c in report.changes] == ["a", "b"] and report.ignored == 1


def test_the_code_location_has_the_sensor_off_by_default():
    from dagster import DefaultSensorStatus

    from neutts_assets.definitions import defs

    sensor_def = defs.get_sensor_def("new_audio_sensor")
    assert sensor_def.default_status == DefaultSensorStatus.STOPPED  # NEUTTS_WATCH_ENABLED=1 turns it on
    assert sensor_def.minimum_interval_seconds == 120
    assert "watch" in sensor_def.required_resource_keys
