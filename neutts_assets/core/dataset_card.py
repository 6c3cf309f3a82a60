"""The dataset card (README.md): YAML that `datasets` reads (one config per channel plus "all",
each listing its shards by name, with the features) and a Markdown body a person reads: the
features, and per channel segments, hours, speakers, gender / dialect / tone mix, a duration
histogram, the codec, the source prefix and the build date.
"""

from __future__ import annotations

from datetime import datetime, timezone

ALL_CONFIG = "all"
SPLIT = "train"


def _configs_yaml(records: list[dict]):
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs

    from neutts_assets.core.dataset_rows import dataset_features

    features = dataset_features()
    configs, infos = {}, {}

    def add(name: str, recs: list[dict], default: bool = False) -> None:
        paths = [s["path"] for r in recs for s in r["shards"]]
        configs[name] = {"data_files": [{"split": SPLIT, "path": paths}], **({"default": True} if default else {})}
        splits = SplitDict()
        splits.add(SplitInfo(SPLIT, num_bytes=sum(s["bytes"] for r in recs for s in r["shards"]),
                             num_examples=sum(r["stats"]["rows"] for r in recs)))
        infos[name] = DatasetInfo(features=features, splits=splits, config_name=name)

    if any(r["channel"] == ALL_CONFIG for r in records):
        raise ValueError(f"a channel named {ALL_CONFIG!r} would clash with the card's all-channels config")
    # A channel whose every segment was filtered out has no shard: a config with no files would not load.
    channels = sorted(r["channel"] for r in records if r["shards"])
    by_channel = {r["channel"]: r for r in records}
    if channels:
        add(ALL_CONFIG, [by_channel[c] for c in channels], default=True)
    for c in channels:
        add(c, [by_channel[c]])
    return MetadataConfigs(configs), DatasetInfosDict(infos)


def _cell(text: str) -> str:
    # Transcript labels are untrusted: keep them from breaking a Markdown table.
    return str(text).replace("|", "\\|").replace("\n", " ")[:100]


def _mix(counts: dict, total: int) -> str:
    if not counts:
        return "_none_"
    return ", ".join(f"{_cell(k) or '(empty)'} {v} ({100 * v / max(total, 1):.0f}%)" for k, v in counts.items())


def _histogram(hist: dict, width: int = 30) -> str:
    peak = max(hist.values(), default=0) or 1
    lines = ["| duration | segments | |", "|---|---:|---|"]
    lines += [f"| {b} | {n} | {'█' * round(width * n / peak)} |" for b, n in hist.items()]
    return "\n".join(lines)


def channel_section(record: dict) -> str:
    """One channel's part of the card; also the Markdown metadata of its materialization."""
    s = record["stats"]
    codecs = ", ".join(f"`{_cell(c)}` ({n})" for c, n in s["codecs"].items()) or "none: rows without codes (no-codes option)"
    if any("random-weights" in c for c in s["codecs"]):
        codecs += " **(random weights: test-only codes, do not train on them)**"
    return "\n".join([
        f"### {record['channel']}",
        "",
        "| | |",
        "|---|---|",
        f"| segments | {s['rows']} |",
        f"| hours | {s['hours']:.2f} |",
        f"| speakers (per recording) | {s['speakers']} |",
        f"| rows with codes | {s['rows_with_codes']} |",
        f"| codec | {codecs} |",
        f"| gender | {_mix(s['gender'], s['rows'])} |",
        f"| dialect | {_mix(s['dialect'], s['rows'])} |",
        f"| tone | {_mix(s['tone'], s['rows'])} |",
        f"| source | `{record['source']}` |",
        f"| built | {record['built_at']} (build `{record['build_id']}`) |",
        f"| shards | {len(record['shards'])} ({sum(x['bytes'] for x in record['shards']) / 1e6:.1f} MB) |",
        "",
        _histogram(s["duration_histogram"]),
        "",
    ])


def card_body(records: list[dict], title: str) -> str:
    from neutts_assets.core.dataset_rows import dataset_features

    records = sorted(records, key=lambda r: r["channel"])
    rows = sum(r["stats"]["rows"] for r in records)
    hours = sum(r["stats"]["seconds"] for r in records) / 3600
    feature_lines = [f"| `{name}` | `{feature!r}` |" for name, feature in dataset_features().items()]
    overview = [
        f"| {r['channel']} | {r['stats']['rows']} | {r['stats']['hours']:.2f} | {r['stats']['speakers']} | "
        f"{', '.join(r['stats']['codecs']) or 'none'} | {r['built_at']} |"
        for r in records
    ]
    first = records[0]["channel"] if records else "CHANNEL"
    return "\n".join([
        f"# {title}",
        "",
        "NeuTTS voice-cloning segments: 16 kHz speech with its transcript, speaker labels and NeuCodec VQ codes "
        "(50 per second, values 0..65535).",
        "",
        f"Card generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}; "
        f"{len(records)} channel(s), {rows} segments, {hours:.2f} hours.",
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("<this folder or repo>", split="train")            # all channels',
        f'ds = load_dataset("<this folder or repo>", "{first}", split="train")  # one channel',
        "```",
        "",
        "## Features",
        "",
        "| column | feature |",
        "|---|---|",
        *feature_lines,
        "",
        "## Channels",
        "",
        "| channel | segments | hours | speakers | codec | built |",
        "|---|---:|---:|---:|---|---|",
        *overview,
        "",
        *[channel_section(r) for r in records],
    ])


def render_card(records: list[dict], title: str) -> str:
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(pretty_name=title, task_categories=["text-to-speech"])
    configs, infos = _configs_yaml(records)
    configs.to_dataset_card_data(data)
    infos.to_dataset_card_data(data)
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{card_body(records, title)}"))
