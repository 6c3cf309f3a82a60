"""Every setting the project reads from the environment, declared once: variable, type, default, description.

The resources built from the environment (defs/resources.py resources_from_env, defs/encoding/codec.py
codec_from_env, defs/inventory/sensors.py watch_settings_from_env), the pydantic fields of the
ConfigurableResource classes, the codec's defaults (pipeline/encoding/codec.py CodecSettings), the
demo's codec choice (cli.py) and docs/configuration.md all derive from the declarations below.

No Dagster here: the pure core and the command line read their settings without loading the code location.
Credentials are declared `secret`: their value is never read here, the Dagster layer passes them on as
EnvVar (so the value never reaches the resources' configuration), and the table shows no value.

    python -m neutts_assets.settings           print docs/configuration.md
    python -m neutts_assets.settings --write   rewrite it
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neutts_assets.demo import DEMO_SOURCE

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
REGENERATE = "python -m neutts_assets.settings --write"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(raw: str) -> bool:
    # Strict: a misspelt value fails the load naming the variable instead of silently meaning "off".
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE)}")


def parse_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def parse_json_object(raw: str) -> dict:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


_KINDS = {
    str: "text",
    int: "integer",
    float: "number",
    parse_bool: "boolean",
    parse_list: "comma-separated list",
    parse_json_object: "JSON object",
}


@dataclass(frozen=True)
class Setting:
    env: str  # the environment variable
    description: str
    default: Any = None  # the value when the variable is unset or empty; None: unset (the consumer's own default)
    parse: Callable[[str], Any] = str
    field: str | None = None  # the resource field it fills, where it fills one
    secret: bool = False  # a credential: passed on as a reference (EnvVar), never read or shown
    computed_default: Callable[[], Any] | None = None  # a default that depends on where it runs
    default_doc: str | None = None  # how the table shows a default that is computed or set elsewhere

    @property
    def kind(self) -> str:
        return _KINDS[self.parse]

    def is_set(self, environ: Mapping[str, str] | None = None) -> bool:
        # Empty counts as unset, like a line of deploy/neutts.env.example left blank.
        return bool((os.environ if environ is None else environ).get(self.env))

    def raw(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The variable as written, None when unset or empty."""
        self._refuse_secret()
        return (os.environ if environ is None else environ).get(self.env) or None

    def read(self, environ: Mapping[str, str] | None = None) -> Any:
        """The parsed value, or the default."""
        raw = self.raw(environ)
        if raw is None:
            return self.default_value()
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise ValueError(f"{self.env}={raw!r} is not a valid {self.kind}: {exc}") from exc

    def default_value(self) -> Any:
        if self.computed_default is not None:
            return self.computed_default()
        return copy.deepcopy(self.default)  # a list or dict default is never shared between readers

    def pydantic_field(self, **extra):
        """The resource field's pydantic Field, with this default and description."""
        from pydantic import Field  # imported here: the table and the pure core need no pydantic

        if self.computed_default is not None:  # required when the resource is built in code
            return Field(description=self.description, **extra)
        if isinstance(self.default, (list, dict)):
            return Field(default_factory=self.default_value, description=self.description, **extra)
        return Field(default=self.default, description=self.description, **extra)

    def _refuse_secret(self) -> None:
        if self.secret:
            raise TypeError(f"{self.env} is a credential: pass it on as EnvVar({self.env!r}), never read its value")


@dataclass(frozen=True)
class Group:
    key: str  # the resource key in Definitions, or what reads the group
    reader: str  # the class, function or file that takes these settings
    settings: tuple[Setting, ...]
    resource: bool = True  # the settings are fields of a ConfigurableResource


def values(group: Group, secret: Callable[[str], Any] | None = None, environ: Mapping[str, str] | None = None):
    """field -> value for the group's resource. A credential becomes secret(variable) when it is set
    (EnvVar in the Dagster layer) and None when not, so the client's own default chain still works."""
    if not group.resource:
        raise TypeError(f"{group.key}'s settings are no resource's fields: read them one by one")
    out = {}
    for s in group.settings:
        if s.secret:
            if secret is None:
                raise TypeError(f"{s.env} is a credential: values() needs secret=EnvVar to pass it on")
            out[s.field] = secret(s.env) if s.is_set(environ) else None
        else:
            out[s.field] = s.read(environ)
    return out


# --- where data lives (defs/resources.py) -------------------------------------------------------

DAGSTER_HOME = Setting(
    "DAGSTER_HOME",
    "the Dagster instance's folder (runs, partitions, dagster.yaml); the local segment store's default parent",
    default_doc="unset: an ephemeral instance",
)


def default_store_url() -> str:
    home = DAGSTER_HOME.read()
    return str(Path(home) / "neutts_store") if home else str(Path.cwd() / ".neutts" / "store")


SOURCE_URL = Setting(
    "NEUTTS_SOURCE",
    "the broadcaster's recordings and transcripts in the users' layout (read only): gs://bucket[/prefix] or a local "
    "folder",
    field="url",
    computed_default=lambda: str(DEMO_SOURCE),
    default_doc="the shipped demo channel's folder (neutts_assets/demo/source)",
)
GCP_PROJECT = Setting(
    "GOOGLE_CLOUD_PROJECT", "GCP project of the GCS clients; unset: the client's default", field="gcp_project"
)
STORE_URL = Setting(
    "NEUTTS_STORE",
    "where segments, codes, manifests and the dataset are written: s3://bucket[/prefix], gs://bucket[/prefix] or a "
    "local folder",
    field="url",
    computed_default=default_store_url,
    default_doc="$DAGSTER_HOME/neutts_store, or ./.neutts/store without DAGSTER_HOME",
)
S3_ENDPOINT_URL = Setting(
    "S3_ENDPOINT_URL", "S3 endpoint of the segment store, e.g. the on-prem NAS; unset: AWS", field="endpoint_url"
)
S3_ACCESS_KEY = Setting(
    "S3_ACCESS_KEY",
    "S3 access key, passed on as EnvVar('S3_ACCESS_KEY'); unset: boto3's own chain (instance role, ~/.aws)",
    field="access_key",
    secret=True,
)
S3_SECRET_KEY = Setting(
    "S3_SECRET_KEY",
    "S3 secret key, passed on as EnvVar('S3_SECRET_KEY'); unset: boto3's own chain (instance role, ~/.aws)",
    field="secret_key",
    secret=True,
)
S3_REGION = Setting("S3_REGION", "S3 region name; unset: boto3's default", field="region")
S3_VERIFY_TLS = Setting(
    "S3_VERIFY_TLS",
    "verify the S3 endpoint's TLS certificate; false for an on-prem endpoint with a private CA; unset: boto3's "
    "default (verify)",
    parse=parse_bool,
    field="verify_tls",
)
STORAGE_MAX_ATTEMPTS = Setting(
    "NEUTTS_STORAGE_MAX_ATTEMPTS",
    "tries per storage request, the first included, before the run fails",
    default=10,
    parse=int,
    field="max_attempts",
)
STORAGE_CONNECT_TIMEOUT_S = Setting(
    "NEUTTS_STORAGE_CONNECT_TIMEOUT_S",
    "seconds a storage client waits for a connection",
    default=10.0,
    parse=float,
    field="connect_timeout_s",
)
STORAGE_READ_TIMEOUT_S = Setting(
    "NEUTTS_STORAGE_READ_TIMEOUT_S",
    "seconds a storage client waits for the next bytes of a response",
    default=60.0,
    parse=float,
    field="read_timeout_s",
)
STORAGE_RETRY_DEADLINE_S = Setting(
    "NEUTTS_STORAGE_RETRY_DEADLINE_S",
    "GCS: most seconds one call spends retrying",
    default=600.0,
    parse=float,
    field="retry_deadline_s",
)
CLIENT_RETRIES = (STORAGE_MAX_ATTEMPTS, STORAGE_CONNECT_TIMEOUT_S, STORAGE_READ_TIMEOUT_S, STORAGE_RETRY_DEADLINE_S)
CHANNEL_MAPPING = Setting(
    "NEUTTS_CHANNEL_MAPPING",
    "(the old --channel_mapping) channel name -> audio folder name in the source bucket, as a JSON object; the demo "
    "channel's entry is always added",
    default={},
    parse=parse_json_object,
    field="channel_mapping",
)

# --- the Hugging Face Hub (defs/resources.py HuggingFaceHub, and the codec's weights) -------------

HUB_DEFAULT_ENDPOINT = "https://huggingface.co"
HUB_REPO = Setting(
    "NEUTTS_HF_REPO",
    "(the old --hf_repo) Hub dataset repo hf_dataset pushes to, e.g. org/arabic-voice-cloning-dataset; unset: "
    "nothing is pushed",
    field="hf_repo",
)
HUB_TOKEN = Setting(
    "HF_TOKEN", "Hugging Face token, passed on as EnvVar('HF_TOKEN'); never shown or logged", field="token", secret=True
)
HUB_PRIVATE = Setting(
    "NEUTTS_HF_PRIVATE",
    "create the Hub repo private (only applies when it does not exist yet)",
    default=True,
    parse=parse_bool,
    field="private",
)
HUB_ENDPOINT = Setting(
    "HF_ENDPOINT",
    "Hugging Face Hub endpoint, for hf_dataset's push and the codec's weights",
    field="endpoint",
    default_doc=f"unset: {HUB_DEFAULT_ENDPOINT}",
)

# --- the codec (defs/encoding/codec.py NeuCodecResource) -----------------------------------------

# Sized from the device's memory on a GPU (pipeline/encoding/codec.py default_batch_seconds); this on the CPU.
CODEC_CPU_BATCH_SECONDS = 60.0

CODEC_WEIGHTS = Setting(
    "NEUTTS_CODEC",
    "pretrained (from_pretrained: Hub or HF_HOME cache), or random / random-full: the real architecture with seeded "
    "random weights, built offline; their codes are labelled test-only",
    default="pretrained",
    field="weights",
)
CODEC_MODEL = Setting(
    "NEUTTS_CODEC_MODEL",
    "neuphonic/neucodec or neuphonic/distill-neucodec",
    default="neuphonic/neucodec",
    field="model_id",
)
CODEC_REVISION = Setting(
    "NEUTTS_CODEC_REVISION", "Hub branch, tag or commit of the weights; unset: main", field="revision"
)
CODEC_SEED = Setting(
    "NEUTTS_CODEC_SEED", "seed of the random weights (random / random-full only)", default=0, parse=int, field="seed"
)
CODEC_DEVICE = Setting("NEUTTS_CODEC_DEVICE", "cuda, cpu, or auto (cuda when present)", default="auto", field="device")
CODEC_DTYPE = Setting(
    "NEUTTS_CODEC_DTYPE",
    "float32; tf32, bfloat16 or float16 trade exact codes for speed",
    default="float32",
    field="dtype",
)
CODEC_BATCH_SECONDS = Setting(
    "NEUTTS_CODEC_BATCH_SECONDS",
    "audio seconds per codec call (segments of one code count); unset: sized for the device's memory, a third of a "
    f"GPU's for activations (about 1,400 s on an H200), {CODEC_CPU_BATCH_SECONDS:g} s on the CPU "
    "(pipeline/encoding/codec.py default_batch_seconds)",
    parse=float,
    field="batch_seconds",
    default_doc="unset: sized for the device",
)
CODEC_DISK_BUDGET_GB = Setting(
    "NEUTTS_CODEC_DISK_BUDGET_GB",
    "most segment GiB held locally between download and upload. Nothing is staged on disk (segments stream "
    "through memory), so this bounds memory too",
    default=2.0,
    parse=float,
    field="disk_budget_gb",
)
CODEC_HOST_WORKERS = Setting(
    "NEUTTS_CODEC_HOST_WORKERS",
    "processes doing the per-segment host work (read, decode, stage-2 file, write); unset: one per core, up to 8",
    parse=int,
    field="host_workers",
    default_doc="unset: one per core, up to 8",
)

# --- the dataset's splits (defs/resources.py DatasetSplit; pipeline/dataset/splits.py) ------------

SPLIT_VALIDATION_FRACTION = Setting(
    "NEUTTS_SPLIT_VALIDATION_FRACTION",
    "share of recordings (or global speakers) hf_dataset puts in the validation split, by a stable hash: raising it "
    "moves units only into validation, adding recordings moves none",
    default=0.05,
    parse=float,
    field="validation_fraction",
)
SPLIT_TEST_FRACTION = Setting(
    "NEUTTS_SPLIT_TEST_FRACTION",
    "share of recordings (or global speakers) in the test split; 0: no test split",
    default=0.0,
    parse=float,
    field="test_fraction",
)
SPLIT_GLOBAL_SPEAKERS = Setting(
    "NEUTTS_SPLIT_GLOBAL_SPEAKERS",
    "regex of speaker_id values that are global across recordings (matched in full): their rows are split by "
    "speaker, so all of a speaker's recordings go to one split; empty: speaker ids are per-recording labels and "
    "whole recordings are split",
    default="",
    field="global_speakers",
)

# --- the quality scores (defs/resources.py QualityScoring; pipeline/quality/) ----------------------

QUALITY_DNSMOS = Setting(
    "NEUTTS_QUALITY_DNSMOS",
    "also score DNSMOS P.835 (dnsmos_sig, dnsmos_bak, dnsmos_ovrl; needs the dnsmos extra): ~37x realtime per CPU "
    "core, batched on the GPU where there is one",
    default=False,
    parse=parse_bool,
    field="dnsmos",
)
QUALITY_DEVICE = Setting(
    "NEUTTS_QUALITY_DEVICE",
    "where DNSMOS runs: cuda, cpu, or auto (cuda when onnxruntime has it)",
    default="auto",
    field="device",
)

# --- the new-audio sensor (defs/inventory/sensors.py) ------------------------------------------

WATCH_CHANNELS = Setting(
    "NEUTTS_WATCH_CHANNELS",
    "channels the new-audio sensor watches, comma-separated; empty: every channel in the bucket",
    default=[],
    parse=parse_list,
    field="channels",
)
WATCH_ENABLED = Setting(
    "NEUTTS_WATCH_ENABLED",
    "start the new-audio sensor running (off in the embedded default: the demo needs no watcher)",
    default=False,
    parse=parse_bool,
)
WATCH_INTERVAL_S = Setting(
    "NEUTTS_WATCH_INTERVAL_S", "seconds between two ticks of the new-audio sensor", default=120, parse=int
)

# --- read outside the resources ------------------------------------------------------------------

MACHINE = Setting(
    "NEUTTS_MACHINE",
    "the machine class (h200, t4) a Celery worker serves; a run routed to another class gets a warning event",
    default_doc="unset: not checked",
)
_REQUIRED = "required by deploy/dagster.yaml"
INSTANCE = (
    DAGSTER_HOME,
    Setting("DAGSTER_PG_HOST", "host of the instance's Postgres", default_doc=_REQUIRED),
    Setting("DAGSTER_PG_PORT", "port of the instance's Postgres", parse=int, default_doc=_REQUIRED),
    Setting("DAGSTER_PG_USER", "user of the instance's Postgres", default_doc=_REQUIRED),
    Setting("DAGSTER_PG_PASSWORD", "password of the instance's Postgres", secret=True, default_doc=_REQUIRED),
    Setting("DAGSTER_PG_DB", "database of the instance's Postgres", default_doc=_REQUIRED),
    Setting(
        "NEUTTS_CELERY_BROKER", "Celery broker URL (Redis), for the daemon and both machines", default_doc=_REQUIRED
    ),
    Setting("NEUTTS_CELERY_BACKEND", "Celery result backend URL (Redis)", default_doc=_REQUIRED),
    Setting(
        "NEUTTS_H200_CONCURRENT_RUNS",
        "runs at once on the H200 (1: one encoding run owns the GPU)",
        parse=int,
        default_doc=_REQUIRED,
    ),
    Setting("NEUTTS_T4_CONCURRENT_RUNS", "runs at once on the T4", parse=int, default_doc=_REQUIRED),
)
CLIENT_LIBRARIES = (
    Setting(
        "HF_HOME",
        "the Hugging Face cache, where the codec's pretrained weights are found when the Hub cannot be reached",
        default_doc="unset: ~/.cache/huggingface",
    ),
    Setting(
        "HF_HUB_OFFLINE",
        "true: the Hugging Face libraries never try the network (the codec's weights come from HF_HOME only); the "
        "codec's reachability check honours it too",
        default=False,
        parse=parse_bool,
    ),
    Setting(
        "GOOGLE_APPLICATION_CREDENTIALS",
        "service-account key file of the GCS clients; unset: the default credentials chain",
    ),
)
HF_HOME, HF_HUB_OFFLINE, GOOGLE_APPLICATION_CREDENTIALS = CLIENT_LIBRARIES

# --- one group per resource, in the order of the table --------------------------------------------

SOURCE = Group("source", "SourceBucket", (SOURCE_URL, GCP_PROJECT, *CLIENT_RETRIES))
STORE = Group(
    "store",
    "SegmentStore",
    (STORE_URL, S3_ENDPOINT_URL, S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION, S3_VERIFY_TLS, GCP_PROJECT, *CLIENT_RETRIES),
)
CHANNELS = Group("channel_settings", "ChannelSettings", (CHANNEL_MAPPING,))
HUB = Group("hub", "HuggingFaceHub", (HUB_REPO, HUB_TOKEN, HUB_PRIVATE, HUB_ENDPOINT))
CODEC = Group(
    "codec",
    "NeuCodecResource",
    (
        CODEC_WEIGHTS,
        CODEC_MODEL,
        CODEC_REVISION,
        CODEC_SEED,
        CODEC_DEVICE,
        CODEC_DTYPE,
        CODEC_BATCH_SECONDS,
        CODEC_DISK_BUDGET_GB,
        CODEC_HOST_WORKERS,
    ),
)
SPLIT = Group("dataset_split", "DatasetSplit", (SPLIT_VALIDATION_FRACTION, SPLIT_TEST_FRACTION, SPLIT_GLOBAL_SPEAKERS))
QUALITY = Group("quality", "QualityScoring", (QUALITY_DNSMOS, QUALITY_DEVICE))
WATCH = Group("watch", "SourceWatchSettings", (WATCH_CHANNELS,))
SENSOR = Group("new_audio_sensor", "new_audio_sensor", (WATCH_ENABLED, WATCH_INTERVAL_S), resource=False)
WORKER = Group("worker", "the Celery worker (defs/orchestration/worker.py)", (MACHINE,), resource=False)
DEPLOYMENT = Group(
    "instance", "the instance and its workers (deploy/dagster.yaml, deploy/celery.yaml)", INSTANCE, resource=False
)
CLIENTS = Group("clients", "the client libraries (Hugging Face, Google Cloud)", CLIENT_LIBRARIES, resource=False)
GROUPS = (SOURCE, STORE, CHANNELS, HUB, CODEC, SPLIT, QUALITY, WATCH, SENSOR, WORKER, DEPLOYMENT, CLIENTS)


def all_settings() -> dict[str, Setting]:
    """variable -> its one declaration."""
    return {s.env: s for g in GROUPS for s in g.settings}


# --- docs/configuration.md ---------------------------------------------------------------------

_INTRO = f"""# Configuration

Every setting is an environment variable, read when the Dagster code location loads and by the
`neutts-assets` command line; unset or empty means the default. `deploy/neutts.env.example` is a
filled-in production example.

Each setting is declared once, in `neutts_assets/settings.py`: the resources built from the
environment, the resources' field defaults and this table all come from there. Do not edit this
file by hand; regenerate it with `{REGENERATE}`.

Credentials (marked *credential*) are handed to the resources as Dagster `EnvVar` references, so
their values never reach the run configuration, the UI or the logs; unset, the client's own
credential chain applies (instance role, `~/.aws`, `gcloud` default credentials).
"""


def _default_text(s: Setting) -> str:
    if s.default_doc is not None:
        text = s.default_doc
    elif s.default is None:
        text = "unset"
    elif isinstance(s.default, bool):
        text = f"`{str(s.default).lower()}`"
    elif isinstance(s.default, float):
        text = f"`{s.default:g}`"
    elif s.default in ([], {}):
        text = "empty"
    else:
        text = f"`{s.default}`"
    return f"{text}; *credential*" if s.secret else text


def _readers() -> dict[str, list[str]]:
    readers: dict[str, list[str]] = {}
    for g in GROUPS:
        for s in g.settings:
            readers.setdefault(s.env, []).append(f"`{g.key}.{s.field}`" if g.resource else g.reader)
    return readers


def markdown_table() -> str:
    readers = _readers()
    rows = ["| Variable | Type | Default | Read by | Description |", "|---|---|---|---|---|"]
    for s in all_settings().values():
        cells = (f"`{s.env}`", s.kind, _default_text(s), ", ".join(readers[s.env]), s.description)
        if any("|" in c for c in cells):
            raise ValueError(f"{s.env}: a table cell may not hold '|'")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def markdown_document() -> str:
    return f"{_INTRO}\n{markdown_table()}"


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
        DOC_PATH.write_text(markdown_document(), encoding="utf-8")
        print(f"wrote {DOC_PATH}")
        return 0
    if argv:
        print(
            f"usage: python -m neutts_assets.settings [--write]   (--write: rewrite {DOC_PATH.name})", file=sys.stderr
        )
        return 2
    sys.stdout.write(markdown_document())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
