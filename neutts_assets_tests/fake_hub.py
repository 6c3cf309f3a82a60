"""A small Hugging Face Hub on loopback: the HTTP calls `create_repo`, `list_repo_tree` and
`create_commit` / `upload_folder` make with HF_HUB_DISABLE_XET=1 (repo create, tree, YAML
validation, preupload, the LFS batch API with basic transfers, the ndjson commit), plus file
downloads. It keeps every commit and every stored file so tests assert on what it received.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".parquet", ".arrow", ".bin", ".npz")


@dataclass
class Repo:
    private: bool
    files: dict = field(
        default_factory=dict
    )  # path -> {"oid", "size", "lfs": sha256 or None, "content": bytes or None}
    commits: list = field(default_factory=list)  # {"summary", "description", "added", "lfs_added", "deleted", "oid"}


class FakeHub:
    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.lfs_puts: list[str] = []  # sha256 of every LFS upload received
        self.fail_commits = 0  # the next N commit calls answer 500
        self.failed_commit_calls = 0
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    # ---- what tests read -------------------------------------------------------------------
    def file_bytes(self, repo_id: str, path: str) -> bytes:
        f = self.repos[repo_id].files[path]
        return self.lfs[f["lfs"]] if f["lfs"] else f["content"]

    # ---- the HTTP side -----------------------------------------------------------------------
    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def _send(self, status: int, body=None, headers=None):
                data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
                self.send_response(status)
                self.send_header(
                    "Content-Type", "application/json" if not isinstance(body, bytes) else "application/octet-stream"
                )
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self._send(401, {"error": "Invalid credentials in Authorization header"})
                    return False
                return True

            def _repo(self, repo_id: str):
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return repo

            def do_GET(self):
                path = unquote(urlparse(self.path).path)
                hub.requests.append(("GET", path))
                if not self._authorized():
                    return
                if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path):
                    repo = self._repo(m[1])
                    if repo is None:
                        return
                    prefix = (m[3] or "").rstrip("/")
                    with hub.lock:
                        entries = [
                            {
                                "type": "file",
                                "path": p,
                                "size": f["size"],
                                "oid": f["oid"],
                                **(
                                    {"lfs": {"oid": f["lfs"], "size": f["size"], "pointerSize": 134}}
                                    if f["lfs"]
                                    else {}
                                ),
                            }
                            for p, f in sorted(repo.files.items())
                            if not prefix or p.startswith(prefix + "/")
                        ]
                    return self._send(200, entries)
                if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/revision/.*)?", path):
                    repo = self._repo(m[1])
                    if repo is None:
                        return
                    sha = repo.commits[-1]["oid"] if repo.commits else "0" * 40
                    return self._send(
                        200,
                        {
                            "id": m[1],
                            "sha": sha,
                            "private": repo.private,
                            "siblings": [{"rfilename": p} for p in repo.files],
                        },
                    )
                if m := re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.*)", path):
                    repo = self._repo(m[1])
                    if repo is None:
                        return
                    if m[3] not in repo.files:
                        return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                    return self._send(200, hub.file_bytes(m[1], m[3]))
                self._send(404, {"error": f"no route GET {path}"})

            def do_PUT(self):
                path = unquote(urlparse(self.path).path)
                hub.requests.append(("PUT", path))
                if m := re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path):
                    data = self._body()
                    if hashlib.sha256(data).hexdigest() != m[1]:
                        return self._send(400, {"error": "sha256 mismatch"})
                    with hub.lock:
                        hub.lfs[m[1]] = data
                        hub.lfs_puts.append(m[1])
                    return self._send(200, {})
                self._send(404, {"error": f"no route PUT {path}"})

            def do_POST(self):
                path = unquote(urlparse(self.path).path)
                hub.requests.append(("POST", path))
                body = self._body()
                if not self._authorized():
                    return
                if path == "/api/repos/create":
                    payload = json.loads(body)
                    repo_id = (
                        f"{payload['organization']}/{payload['name']}"
                        if payload.get("organization")
                        else payload["name"]
                    )
                    with hub.lock:
                        if repo_id in hub.repos:
                            return self._send(
                                409,
                                {
                                    "error": "You already created this dataset repo",
                                    "url": f"{hub.url}/datasets/{repo_id}",
                                },
                            )
                        repo = hub.repos[repo_id] = Repo(private=payload.get("visibility", "public") == "private")
                        content = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
                        repo.files[".gitattributes"] = {
                            "oid": _git_oid(content),
                            "size": len(content),
                            "lfs": None,
                            "content": content,
                        }
                    return self._send(200, {"url": f"{hub.url}/datasets/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":
                    return self._send(200, {"errors": [], "warnings": []})
                if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/preupload/([^/]+)", path):
                    repo = self._repo(m[1])
                    if repo is None:
                        return
                    files = []
                    for f in json.loads(body)["files"]:
                        existing = repo.files.get(f["path"])
                        lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] > 10_000_000
                        oid = (existing["lfs"] if lfs else existing["oid"]) if existing else None
                        files.append(
                            {
                                "path": f["path"],
                                "uploadMode": "lfs" if lfs else "regular",
                                "shouldIgnore": False,
                                "oid": oid,
                            }
                        )
                    return self._send(200, {"files": files, "commitOid": "0" * 40})
                if m := re.fullmatch(r"/datasets/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
                    objects = []
                    for o in json.loads(body)["objects"]:
                        entry = {"oid": o["oid"], "size": o["size"]}
                        if o["oid"] not in hub.lfs:  # content the Hub already holds is not uploaded again
                            entry["actions"] = {"upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"}}
                        objects.append(entry)
                    return self._send(200, {"transfer": "basic", "objects": objects})
                if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/commit/([^/]+)", path):
                    repo = self._repo(m[1])
                    if repo is None:
                        return
                    with hub.lock:
                        if hub.fail_commits > 0:
                            hub.fail_commits -= 1
                            hub.failed_commit_calls += 1
                            return self._send(
                                500, {"error": "Internal Error - We're working hard to fix this as soon as possible!"}
                            )
                        return self._commit(m[1], repo, body)
                self._send(404, {"error": f"no route POST {path}"})

            def _commit(self, repo_id: str, repo: Repo, body: bytes):
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                header = next(line["value"] for line in lines if line["key"] == "header")
                head = repo.commits[-1]["oid"] if repo.commits else "0" * 40
                if header.get("parentCommit") not in (
                    None,
                    head,
                ):  # as the Hub: the branch moved since the client looked
                    return self._send(412, {"error": "A commit has happened since. Please refresh and try again."})
                commit = {
                    "summary": header["summary"],
                    "description": header.get("description", ""),
                    "added": [],
                    "lfs_added": [],
                    "deleted": [],
                }
                new_files = dict(repo.files)
                for line in lines:
                    key, v = line["key"], line["value"]
                    if key == "file":
                        content = base64.b64decode(v["content"])
                        new_files[v["path"]] = {
                            "oid": _git_oid(content),
                            "size": len(content),
                            "lfs": None,
                            "content": content,
                        }
                        commit["added"].append(v["path"])
                    elif key == "lfsFile":
                        if v["oid"] not in hub.lfs:
                            return self._send(422, {"error": f"LFS object {v['oid']} was never uploaded"})
                        new_files[v["path"]] = {
                            "oid": _git_oid(hub.lfs[v["oid"]]),
                            "size": v["size"],
                            "lfs": v["oid"],
                            "content": None,
                        }
                        commit["lfs_added"].append(v["path"])
                    elif key == "deletedFile":
                        if v["path"] not in new_files:
                            return self._send(
                                404, {"error": "A file with this name doesn't exist"}, {"X-Error-Code": "EntryNotFound"}
                            )
                        del new_files[v["path"]]
                        commit["deleted"].append(v["path"])
                    elif key == "deletedFolder":
                        gone = [p for p in new_files if p.startswith(v["path"].rstrip("/") + "/")]
                        for p in gone:
                            del new_files[p]
                        commit["deleted"] += gone
                repo.files = new_files  # all or nothing, as a git commit
                commit["oid"] = hashlib.sha1(f"{repo_id}{len(repo.commits)}{body[:200]!r}".encode()).hexdigest()
                repo.commits.append(commit)
                return self._send(
                    200,
                    {
                        "success": True,
                        "commitOid": commit["oid"],
                        "commitUrl": f"{hub.url}/datasets/{repo_id}/commit/{commit['oid']}",
                    },
                )

        return Handler


def _git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
