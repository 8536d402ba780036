"""A Hugging Face Hub on 127.0.0.1, for tests: the calls huggingface_hub makes to download and to push.

It answers what the real Hub answers for these calls (read from huggingface_hub's ``file_download``,
``hf_api`` and ``_commit_api``):

* ``HEAD``/``GET /{repo}/resolve/{revision}/{path}``: a small file directly (``X-Repo-Commit``, an
  ``ETag`` that is its git blob hash, ``Content-Length``); a ``.safetensors`` file as the Hub serves LFS
  files, a 302 to a second server standing in for the CDN, with ``X-Linked-Etag`` (its sha256) and
  ``X-Linked-Size``; errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``,
  ``EntryNotFound``), which huggingface_hub turns into its exceptions;
* ``POST /api/repos/create``, ``POST /api/models/{repo}/branch/{branch}``, ``POST /api/validate-yaml``
  (the README's front matter: YAML, and a licence id the Hub knows),
  ``POST /api/models/{repo}/preupload/{revision}`` (every file ``regular``: sent inline, base64, in the
  commit, so no LFS or Xet transfer is involved) and ``POST /api/models/{repo}/commit/{revision}`` (NDJSON);
* ``GET /api/models/{repo}/revision/{revision}`` (what ``repo_info`` asks).

Writes need an ``Authorization: Bearer ...`` header. :meth:`FakeHub.tamper` makes the server send other
bytes for a file than were committed, with headers that match those bytes, as a changed file on the
real Hub would arrive: the client cannot tell.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import yaml


@dataclass
class Repo:
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    """commit -> the whole tree at that commit (path -> bytes)."""
    messages: dict[str, str] = field(default_factory=dict)


def git_blob_sha1(data: bytes) -> str:
    """The ETag the Hub gives a file stored in git: its git blob hash."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Start with :meth:`start` (or ``with FakeHub() as hub``); :attr:`endpoint` is what ``HF_ENDPOINT``
    would be. State is plain data: :attr:`repos`, :attr:`requests` (method, path) in order."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.blobs: dict[str, bytes] = {}  # what the CDN serves, by sha256
        self._tampered: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()
        self._hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, cdn=False))
        self._cdn = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, cdn=True))
        self._threads: list[threading.Thread] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def start(self) -> FakeHub:
        for server in (self._hub, self._cdn):
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop answering and free both ports: a client that tries now is refused."""
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._threads:
            self.stop()

    # -- state ------------------------------------------------------------------------------------------

    def create(self, repo_id: str, *, private: bool = False) -> Repo:
        """An empty repository as the Hub makes one: a first commit holding ``.gitattributes``."""
        with self._lock:
            repo = self.repos[repo_id] = Repo(private=private)
        self.commit(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
        return repo

    def commit(
        self, repo_id: str, files: dict[str, bytes], *, branch: str = "main", message: str = "commit"
    ) -> str:
        """Add ``files`` to ``branch`` (created from main if absent) in a new commit; its 40-hex id."""
        with self._lock:
            repo = self.repos[repo_id]
            parent = repo.branches.get(branch) or repo.branches.get("main")
            tree = {**(repo.commits[parent] if parent else {}), **files}
            digest = hashlib.sha1(repr((parent, sorted(tree.items()), message)).encode()).hexdigest()
            repo.commits[digest] = tree
            repo.messages[digest] = message
            repo.branches[branch] = digest
            return digest

    def tamper(self, repo_id: str, path: str, data: bytes) -> None:
        """Serve ``data`` for ``path`` at every revision of ``repo_id`` from now on."""
        with self._lock:
            self._tampered[(repo_id, path)] = data

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.branches.get(revision, revision)]

    def resolve(self, repo_id: str, revision: str) -> str | None:
        repo = self.repos[repo_id]
        commit = repo.branches.get(revision, revision)
        return commit if commit in repo.commits else None

    def served(self, repo_id: str, commit: str, path: str) -> bytes | None:
        data = self._tampered.get((repo_id, path))
        return data if data is not None else self.repos[repo_id].commits[commit].get(path)


LICENCES = frozenset({"apache-2.0", "bsd-3-clause", "cc-by-4.0", "cc-by-nc-4.0", "mit", "other"})
"""A few of the licence ids the Hub's metadata validation accepts (it refuses any other)."""

_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")
_API_REPO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<action>[a-z]+)/(?P<revision>.+)$")


def _handler(hub: FakeHub, *, cdn: bool) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        # One request per connection: a pooled keep-alive connection would outlive stop(), and a test
        # that stops the server must see every later request refused.
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        # -- plumbing ----------------------------------------------------------------------------------

        def _answer(
            self,
            status: int,
            body: bytes = b"",
            headers: dict[str, str] | None = None,
            *,
            send_body: bool = True,
        ) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body and body:
                self.wfile.write(body)

        def _json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(value).encode()
            self._answer(status, body, {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, code: str | None, message: str, *, send_body: bool = True) -> None:
            headers = {"X-Error-Message": message, "Content-Type": "application/json"}
            if code:
                headers["X-Error-Code"] = code
            body = json.dumps({"error": message}).encode()
            self._answer(status, body, headers, send_body=send_body)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _authorised(self) -> bool:
            if self.headers.get("Authorization", "").startswith("Bearer "):
                return True
            self._error(401, None, "Invalid credentials in Authorization header")
            return False

        # -- downloads ---------------------------------------------------------------------------------

        def do_HEAD(self) -> None:
            self._get(send_body=False)

        def do_GET(self) -> None:
            self._get(send_body=True)

        def _get(self, *, send_body: bool) -> None:
            path = urllib.parse.urlsplit(self.path).path
            hub.requests.append((self.command, path))
            if cdn:
                data = hub.blobs.get(path.strip("/"))
                if data is None:
                    self._answer(404, b"no such blob", send_body=send_body)
                else:
                    self._answer(200, data, {"ETag": f'"{path.strip("/")}"'}, send_body=send_body)
                return
            api = _API_REPO.match(path)
            if api and api["action"] == "revision":
                self._revision_info(api["repo"], urllib.parse.unquote(api["revision"]))
                return
            match = _RESOLVE.match(path)
            if not match:
                self._error(404, None, "not found", send_body=send_body)
                return
            repo_id = match["repo"]
            revision, file = urllib.parse.unquote(match["revision"]), urllib.parse.unquote(match["path"])
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and "Authorization" not in self.headers):
                self._error(404, "RepoNotFound", "Repository not found", send_body=send_body)
                return
            commit = hub.resolve(repo_id, revision)
            if commit is None:
                self._error(404, "RevisionNotFound", "Invalid rev id: " + revision, send_body=send_body)
                return
            data = hub.served(repo_id, commit, file)
            if data is None:
                headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}
                self._answer(404, b'{"error": "Entry not found"}', headers, send_body=send_body)
                return
            if file.endswith(".safetensors"):  # an LFS file: the Hub redirects to its CDN
                sha256 = hashlib.sha256(data).hexdigest()
                hub.blobs[sha256] = data
                headers = {
                    "Location": f"{hub.cdn}/{sha256}",
                    "X-Repo-Commit": commit,
                    "X-Linked-Etag": f'"{sha256}"',
                    "X-Linked-Size": str(len(data)),
                    "ETag": f'"{git_blob_sha1(data)}"',
                }
                self._answer(302, b"", headers, send_body=send_body)
                return
            headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_sha1(data)}"'}
            self._answer(200, data, headers, send_body=send_body)

        def _revision_info(self, repo_id: str, revision: str) -> None:
            if repo_id not in hub.repos:
                self._error(404, "RepoNotFound", "Repository not found")
                return
            commit = hub.resolve(repo_id, revision)
            if commit is None:
                self._error(404, "RevisionNotFound", "Invalid rev id: " + revision)
                return
            siblings = [{"rfilename": p} for p in sorted(hub.repos[repo_id].commits[commit])]
            self._json(200, {"id": repo_id, "modelId": repo_id, "sha": commit, "siblings": siblings})

        # -- pushes ------------------------------------------------------------------------------------

        def do_POST(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            hub.requests.append(("POST", path))
            body = self._body()
            if cdn:
                self._answer(405)
                return
            if path == "/api/validate-yaml":
                self._validate_yaml(json.loads(body))
                return
            if not self._authorised():
                return
            if path == "/api/repos/create":
                self._create(json.loads(body))
                return
            api = _API_REPO.match(path)
            if not api or api["repo"] not in hub.repos:
                self._error(404, "RepoNotFound", "Repository not found")
                return
            repo_id, action = api["repo"], api["action"]
            revision = urllib.parse.unquote(api["revision"])
            if action == "branch":
                if revision in hub.repos[repo_id].branches:
                    self._error(409, None, "Reference already exists")
                else:
                    start = json.loads(body or b"{}").get("startingPoint") or "main"
                    hub.repos[repo_id].branches[revision] = hub.resolve(repo_id, start) or ""
                    self._json(200, {})
            elif hub.resolve(repo_id, revision) is None:
                self._error(404, "RevisionNotFound", "Invalid rev id: " + revision)
            elif action == "preupload":
                files = json.loads(body)["files"]
                modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                self._json(200, {"files": modes})
            elif action == "commit":
                self._commit(repo_id, revision, body)
            else:
                self._error(404, None, "not found")

        def _validate_yaml(self, payload: dict[str, Any]) -> None:
            content = payload.get("content", "")
            front = re.match(r"^---\n(.*?)\n---\n", content, re.S)
            try:
                metadata = yaml.safe_load(front[1]) if front else {}
            except yaml.YAMLError as err:
                self._json(400, {"errors": [{"message": str(err)}]})
                return
            licence = metadata.get("license")
            if licence is not None and licence not in LICENCES:
                message = f'"license" must be one of [{", ".join(sorted(LICENCES))}]'
                self._json(400, {"errors": [{"message": message}]})
                return
            self._json(200, {"errors": [], "warnings": []})

        def _create(self, payload: dict[str, Any]) -> None:
            repo_id = f"{payload['organization']}/{payload['name']}"
            if repo_id in hub.repos:  # the Hub's conflict answer names the repository (the client reads it)
                body = {"error": "You already created this model repo", "url": f"{hub.endpoint}/{repo_id}"}
                self._json(409, body, {"X-Error-Message": body["error"]})
                return
            hub.create(repo_id, private=payload.get("visibility") == "private")
            self._json(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})

        def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            header = next(line["value"] for line in lines if line["key"] == "header")
            files = {}
            for line in lines:
                if line["key"] == "file":
                    value = line["value"]
                    assert value["encoding"] == "base64", value
                    files[value["path"]] = base64.b64decode(value["content"])
                elif line["key"] != "header":  # lfsFile, deletions: not what these tests push
                    self._error(400, None, f"the fake Hub does not take {line['key']}")
                    return
            commit = hub.commit(repo_id, files, branch=revision, message=header["summary"])
            self._json(
                200,
                {"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{commit}", "commitOid": commit},
            )

    return Handler
