"""Each setting is declared once (neutts_assets/settings.py), and everything else agrees with it: the
generated docs/configuration.md, the variable names the package reads, the resources' field defaults
and descriptions, the codec's defaults, and the resources built from the environment."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from dagster import DefaultSensorStatus
from pydantic_core import PydanticUndefined

from neutts_assets import settings as S
from neutts_assets.defs.encoding.codec import NeuCodecResource, codec_from_env
from neutts_assets.defs.inventory import sensors
from neutts_assets.defs.inventory.sensors import SourceWatchSettings, watch_settings_from_env
from neutts_assets.defs.resources import (
    ChannelSettings,
    DatasetSplit,
    HuggingFaceHub,
    QualityScoring,
    SegmentStore,
    SourceBucket,
    resources_from_env,
)
from neutts_assets.demo import DEMO_CHANNEL_MAPPING, DEMO_SOURCE
from neutts_assets.pipeline.encoding.codec import CodecSettings, default_batch_seconds, hub_endpoint
from neutts_assets.pipeline.encoding.stream import StreamSettings
from neutts_assets.storage.retries import RetrySettings

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "neutts_assets"
# The project's own prefixes, the S3 and Hugging Face clients' and GCP's project variable.
VARIABLE = re.compile(r"\b(?:(?:NEUTTS|S3|HF)_[A-Z0-9_]*[A-Z0-9]|GOOGLE_CLOUD_PROJECT)\b")
RESOURCE_CLASSES = {
    "source": SourceBucket,
    "store": SegmentStore,
    "channel_settings": ChannelSettings,
    "hub": HuggingFaceHub,
    "codec": NeuCodecResource,
    "dataset_split": DatasetSplit,
    "quality": QualityScoring,
    "watch": SourceWatchSettings,
}


@pytest.fixture
def bare_env(monkeypatch):
    """No declared variable set: what a machine without the deployment's env file sees."""
    for name in S.all_settings():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_docs_configuration_md_is_the_generated_table():
    doc = S.DOC_PATH
    assert doc == REPO_ROOT / "docs" / "configuration.md"
    current = doc.read_text(encoding="utf-8") if doc.exists() else ""
    assert current == S.markdown_document(), f"docs/configuration.md is stale: regenerate it with `{S.REGENERATE}`"
    for name in S.all_settings():
        assert f"| `{name}` |" in S.markdown_table()


def test_every_variable_the_package_names_is_declared():
    declared = set(S.all_settings())
    named = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in VARIABLE.findall(path.read_text(encoding="utf-8")):
            named.setdefault(name, path.relative_to(REPO_ROOT))
    missing = {name: str(where) for name, where in named.items() if name not in declared}
    assert not missing, f"declare these in neutts_assets/settings.py (and `{S.REGENERATE}`): {missing}"


def test_every_variable_the_deployment_files_name_is_declared():
    declared = set(S.all_settings())
    deploy = REPO_ROOT / "deploy"
    named = set()
    for path in deploy.glob("*.yaml"):
        named |= set(re.findall(r"\{env:\s*([A-Z0-9_]+)\}", path.read_text(encoding="utf-8")))
    example = (deploy / "neutts.env.example").read_text(encoding="utf-8")
    named |= set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert named and not named - declared, sorted(named - declared)


def test_each_variable_is_declared_once_and_credentials_are_marked():
    declarations = [s for g in S.GROUPS for s in g.settings]
    by_name = {}
    for s in declarations:
        assert by_name.setdefault(s.env, s) is s, f"{s.env} is declared twice"
        assert s.description and "|" not in s.description
        assert s.kind  # its parser is one the table knows
    for name in ("S3_ACCESS_KEY", "S3_SECRET_KEY", "HF_TOKEN", "DAGSTER_PG_PASSWORD"):
        assert by_name[name].secret
        with pytest.raises(TypeError):
            by_name[name].read({name: "value"})  # a credential's value is never read as configuration
    for g in S.GROUPS:
        assert all(s.field for s in g.settings) or not g.resource, g.key


def test_each_resource_field_has_the_declared_default_and_description():
    for group in S.GROUPS:
        if not group.resource:
            continue
        cls = RESOURCE_CLASSES[group.key]
        assert cls.__name__ == group.reader
        for s in group.settings:
            field = cls.model_fields[s.field]
            assert field.description == s.description, (cls.__name__, s.field)
            if s.computed_default is not None:  # computed when read from the environment; required in code
                assert field.is_required() and field.get_default() is PydanticUndefined, (cls.__name__, s.field)
            else:
                assert field.get_default(call_default_factory=True) == s.default, (cls.__name__, s.field)


def test_the_codec_defaults_are_the_declared_ones():
    defaults = {f.name: f.default for f in dataclasses.fields(CodecSettings)}
    for s in (S.CODEC_MODEL, S.CODEC_REVISION, S.CODEC_WEIGHTS, S.CODEC_DTYPE, S.CODEC_SEED):
        assert defaults[s.field] == s.default, s.env
    assert default_batch_seconds("cpu") == S.CODEC_CPU_BATCH_SECONDS
    assert f"{S.CODEC_CPU_BATCH_SECONDS:g} s on the CPU" in S.CODEC_BATCH_SECONDS.description


def test_the_pure_cores_own_defaults_agree_with_the_declared_ones():
    """RetrySettings and StreamSettings (storage/ and pipeline/, used without the resources) take
    their defaults from the declarations: they must stay the declared ones."""
    retries = RetrySettings()
    assert (retries.max_attempts, retries.connect_timeout_s, retries.read_timeout_s, retries.deadline_s) == tuple(
        s.default for s in S.CLIENT_RETRIES
    )
    stream = StreamSettings()
    assert stream.batch_seconds == S.CODEC_BATCH_SECONDS.default
    assert stream.budget_bytes == int(S.CODEC_DISK_BUDGET_GB.default * 1024**3)
    assert stream.io_threads == NeuCodecResource().io_threads


def test_nothing_set_gives_the_declared_defaults(bare_env, tmp_path):
    bare_env.chdir(tmp_path)
    r = resources_from_env()
    assert r["source"].url == str(DEMO_SOURCE) and r["source"].gcp_project is None
    assert r["store"].url == str(tmp_path / ".neutts" / "store")
    assert (r["store"].access_key, r["store"].secret_key, r["store"].verify_tls) == (None, None, None)
    assert r["store"].retry_settings().max_attempts == 10 and r["source"].read_timeout_s == 60.0
    assert r["channel_settings"].channel_mapping == DEMO_CHANNEL_MAPPING
    assert (r["hub"].hf_repo, r["hub"].token, r["hub"].private, r["hub"].endpoint) == (None, None, True, None)
    assert r["codec"] == NeuCodecResource()
    assert watch_settings_from_env().channels == []
    assert sensors._interval_seconds() == 120 and sensors._default_status() == DefaultSensorStatus.STOPPED
    assert hub_endpoint() == "https://huggingface.co"
    bare_env.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert resources_from_env()["store"].url == str(tmp_path / "home" / "neutts_store")


def test_resources_from_env_take_the_variables(bare_env):
    for name, value in {
        "NEUTTS_SOURCE": "gs://recordings/prefix",
        "NEUTTS_STORE": "s3://segments/neutts",
        "S3_ENDPOINT_URL": "https://nas.example:9021",
        "S3_ACCESS_KEY": "sentinel-access-Zq1",
        "S3_SECRET_KEY": "sentinel-secret-Zq2",
        "S3_VERIFY_TLS": "false",
        "GOOGLE_CLOUD_PROJECT": "proj-1",
        "NEUTTS_STORAGE_MAX_ATTEMPTS": "4",
        "NEUTTS_CHANNEL_MAPPING": json.dumps({"Atheer_-": "Atheer - أثير"}),
        "NEUTTS_HF_REPO": "org/ds",
        "HF_TOKEN": "hf_sentinel_Zq3",
        "NEUTTS_HF_PRIVATE": "no",
        "NEUTTS_CODEC": "random",
        "NEUTTS_CODEC_BATCH_SECONDS": "12.5",
        "NEUTTS_CODEC_HOST_WORKERS": "3",
        "NEUTTS_WATCH_CHANNELS": "a, b,",
    }.items():
        bare_env.setenv(name, value)
    r = resources_from_env()
    assert (r["source"].url, r["source"].gcp_project, r["source"].max_attempts) == (
        "gs://recordings/prefix",
        "proj-1",
        4,
    )
    store = r["store"]
    assert (store.url, store.endpoint_url, store.verify_tls, store.max_attempts) == (
        "s3://segments/neutts",
        "https://nas.example:9021",
        False,
        4,
    )
    # Credentials are EnvVar references: the resource holds the variable's name, never its value.
    assert (store.access_key, store.secret_key, r["hub"].token) == ("S3_ACCESS_KEY", "S3_SECRET_KEY", "HF_TOKEN")
    assert not [v for v in ("sentinel-access-Zq1", "sentinel-secret-Zq2", "hf_sentinel_Zq3") if v in repr(r)]
    assert r["channel_settings"].channel_mapping == {**DEMO_CHANNEL_MAPPING, "Atheer_-": "Atheer - أثير"}
    assert (r["hub"].hf_repo, r["hub"].private) == ("org/ds", False)
    codec = r["codec"]
    assert (codec.weights, codec.batch_seconds, codec.host_workers) == ("random", 12.5, 3)
    assert codec == codec_from_env() and codec.stream_settings().batch_seconds == 12.5
    assert watch_settings_from_env().channels == ["a", "b"]


def test_a_bad_value_fails_naming_the_variable(bare_env):
    bare_env.setenv("NEUTTS_CODEC_BATCH_SECONDS", "lots")
    with pytest.raises(ValueError, match="NEUTTS_CODEC_BATCH_SECONDS='lots' is not a valid number"):
        codec_from_env()
    bare_env.setenv("NEUTTS_WATCH_ENABLED", "maybe")
    with pytest.raises(ValueError, match="NEUTTS_WATCH_ENABLED"):
        sensors._default_status()
