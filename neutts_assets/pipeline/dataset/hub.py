"""Pushes one channel of the dataset to a Hugging Face Hub dataset repo as ONE commit: the
channel's new shards, the deletion of its old shards, and a regenerated card. Nothing outside
`data/{channel}/` is ever deleted, so other channels' files stay whatever machine pushed them.

The commit is computed against the Hub's tree: a shard already there under the same name and
size is not sent again (shard names are unique per build, and an incremental build keeps the
unchanged shards under their names), so after an incremental build the commit carries only the
new shards, the deletion of the shards that build replaced or dropped, and the card. A retry
likewise pushes what is missing, and LFS objects a failed attempt uploaded are known to the Hub,
which tells the client not to upload them again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from neutts_assets.pipeline.dataset.card import foreign_configs, render_card
from neutts_assets.pipeline.dataset.store import data_folder

REPO_TYPE = "dataset"


class HubPushError(RuntimeError):
    """The push failed; the message names the repo, the channel and the cause, never the token."""


@dataclass
class PushResult:
    repo_id: str
    commit_url: str = ""
    commit_oid: str = ""
    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    already_on_hub: list[str] = field(default_factory=list)
    attempts: int = 0
    channels_on_hub: list[str] = field(default_factory=list)


def push_channel(
    record: dict,
    all_records: dict[str, dict],
    repo_id: str,
    token: str | None,
    local_shard: Callable[[list[str]], dict[str, Path]],
    title: str,
    private: bool = True,
    endpoint: str | None = None,
    attempts: int = 3,
    backoff_s: float = 2.0,
    log: Callable[[str], None] = lambda _: None,
) -> PushResult:
    """`local_shard(paths)` gives local files for the shards that must be uploaded (the build's own
    copies, or downloads from the store).

    The retry loop is ours for what huggingface_hub does not retry. It retries (http_backoff: 408,
    429, 5xx and network errors) the tree listing and, within create_commit, the preupload and LFS
    calls; but not the commit itself (a lost answer could land a commit twice), nor repo_info,
    create_repo or the card's download. And a commit refused because the branch moved past its
    parent (412) can only be answered by computing it again, card included, from the new head: each
    attempt starts over from a new view of the repo, so a retry never commits a card computed from
    a view that is gone."""
    from huggingface_hub import HfApi

    push = _ChannelPush(HfApi(endpoint=endpoint, token=token), repo_id, token, record, all_records)
    result = PushResult(repo_id)
    last_error: Exception | None = None
    for attempt in range(1, max(1, attempts) + 1):
        result.attempts = attempt
        try:
            push.attempt(result, local_shard, title, private)
            return result
        except Exception as exc:  # HTTP, network and validation errors alike: retried, then reported
            last_error = exc
            log(f"push of channel {push.channel!r} to {repo_id}: attempt {attempt}/{attempts} failed: {_describe(exc)}")
            if attempt < attempts:
                time.sleep(backoff_s * 2 ** (attempt - 1))
    raise HubPushError(
        f"pushing channel {push.channel!r} to the Hub dataset {repo_id!r} failed after {result.attempts} attempt(s): "
        f"{_describe(last_error)}. The dataset in the store is intact and published; materialize hf_dataset "
        f"for {push.channel!r} again to push what is missing."
    ) from last_error


@dataclass
class _RepoView:
    """What one attempt's commit is computed from: the repo at its head commit."""

    head: str
    ours: dict[str, dict]  # this build's shards by path
    missing: list[str]  # ours, not on the Hub as they are
    stale: list[str]  # this channel's files on the Hub that this build does not have
    hub_records: list[dict]  # the channels the Hub's card lists once the commit lands, this one last
    foreign: dict[str, dict]  # configs of channels pushed from another store


class _ChannelPush:
    """One channel's push, one attempt at a time: look at the repo, then commit against that view."""

    def __init__(self, api, repo_id: str, token: str | None, record: dict, all_records: dict[str, dict]):
        self.api, self.repo_id, self.token = api, repo_id, token
        self.record, self.all_records = record, all_records
        self.channel = record["channel"]

    def attempt(
        self, result: PushResult, local_shard: Callable[[list[str]], dict[str, Path]], title: str, private: bool
    ) -> None:
        self.api.create_repo(self.repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        view = self._view()
        info = self._commit(view, local_shard(view.missing), title)
        result.commit_url, result.commit_oid = info.commit_url, info.oid
        result.added, result.deleted = view.missing, view.stale
        result.already_on_hub = sorted(set(view.ours) - set(view.missing))
        result.channels_on_hub = sorted([r["channel"] for r in view.hub_records] + list(view.foreign))

    def _view(self) -> _RepoView:
        from huggingface_hub.hf_api import RepoFile

        api, repo_id, channel = self.api, self.repo_id, self.channel
        # The card is computed from this view of the repo; the commit names it as its parent, so a
        # push of another channel landing in between is refused (412) and this attempt starts over
        # from the new view, instead of committing a card without that channel.
        head = api.repo_info(repo_id, repo_type=REPO_TYPE).sha
        on_hub = {
            f.path: f
            for f in api.list_repo_tree(repo_id, repo_type=REPO_TYPE, recursive=True, revision=head)
            if isinstance(f, RepoFile)
        }
        ours = {s["path"]: s for s in self.record["shards"]}
        missing = sorted(p for p, s in ours.items() if p not in on_hub or on_hub[p].size != s["bytes"])
        stale = sorted(p for p in on_hub if p.startswith(data_folder(channel)) and p not in ours)
        # The Hub's card lists the channels whose every shard is there once this commit lands.
        present = set(on_hub) - set(stale) | set(ours)
        hub_records = [
            r for c, r in self.all_records.items() if c != channel and all(s["path"] in present for s in r["shards"])
        ]
        hub_records.append(self.record)
        # Channels pushed here from another store keep their configs: this store has no record of them.
        foreign = {}
        if "README.md" in on_hub:
            foreign = foreign_configs(_read_text(api, repo_id, self.token), set(self.all_records) | {channel}, present)
        return _RepoView(head, ours, missing, stale, hub_records, foreign)

    def _commit(self, view: _RepoView, files: dict[str, Path], title: str):
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(files[p])) for p in view.missing]
        operations += [CommitOperationDelete(path_in_repo=p) for p in view.stale]
        card = render_card(view.hub_records, title, view.foreign)
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
        record, kept = self.record, len(view.ours) - len(view.missing)
        return self.api.create_commit(
            self.repo_id,
            operations,
            repo_type=REPO_TYPE,
            commit_message=f"hf_dataset: channel {self.channel}, build {record['build_id']} ({record['stats']['rows']} rows)",
            commit_description=f"{len(view.missing)} shard(s) added, {len(view.stale)} removed, {kept} kept as they "
            "are, card regenerated; other channels untouched.",
            parent_commit=view.head,
        )


def _read_text(api, repo_id: str, token: str | None) -> str:
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    response = get_session().get(
        hf_hub_url(repo_id, "README.md", repo_type=REPO_TYPE, endpoint=api.endpoint),
        headers=build_hf_headers(token=token),
        follow_redirects=True,
    )
    hf_raise_for_status(response)
    return response.content.decode("utf-8", errors="replace")


def _describe(exc: Exception | None) -> str:
    lines = [line.strip() for line in f"{type(exc).__name__}: {exc}".splitlines() if line.strip()]
    return " / ".join(lines)[:600] or "unknown error"
