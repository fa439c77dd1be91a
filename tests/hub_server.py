"""A tiny Hugging Face Hub look-alike for tests that push and pull models without the internet.

The server keeps every repository in memory and implements only the HTTP calls that
``huggingface_hub`` 2.x and ``transformers`` 5.x make for ``push_to_hub`` / ``HfApi.upload_folder``
and for ``from_pretrained`` / ``snapshot_download`` / ``pipeline``:

========  =====================================================  ==========================================
Method    Path                                                   Used by
========  =====================================================  ==========================================
POST      ``/api/repos/create``                                  ``create_repo`` (409 when it exists)
POST      ``/api/validate-yaml``                                 ``create_commit`` when a README.md is added
POST      ``/api/models/{ns}/{name}/preupload/{rev}``            upload mode (regular or LFS) of each file
POST      ``/{ns}/{name}.git/info/lfs/objects/batch``            LFS batch API: where to PUT each LFS object
PUT       ``/lfs-upload/{sha256}``                               the upload URL handed out by the batch API
POST      ``/api/models/{ns}/{name}/commit/{rev}``               NDJSON commit (header / file / lfsFile / deletions)
GET       ``/api/models/{ns}/{name}[/revision/{rev}]``           ``repo_info`` / ``model_info``
GET       ``/api/models/{ns}/{name}/tree/{rev}[/{path}]``        ``list_repo_tree`` (``snapshot_download``)
HEAD/GET  ``/{ns}/{name}/resolve/{rev}/{path}``                  ``hf_hub_download``
========  =====================================================  ==========================================

Nothing else is called by those flows (``whoami-v2`` and ``paths-info`` are not), so anything else gets a
plain 404; the one such call seen, ``/api/agent-harnesses`` (best-effort agent detection), ignores it.

Xet storage is never offered: ``huggingface_hub`` picks the Xet upload path on the client side whenever
``hf_xet`` is installed, unless ``HF_HUB_DISABLE_XET=1`` (read once, into
``huggingface_hub.constants.HF_HUB_DISABLE_XET``). The :func:`hub_server` fixture sets both for the test
process and :func:`hub_env` puts the variable into the environment of subprocesses. Downloads never see
``X-Xet-Hash`` headers, so they always use plain HTTP.

Use it from a test module (pytest puts the test file's folder on ``sys.path``)::

    from hub_server import hub_env, hub_server  # noqa: F401  (hub_server is a fixture)

    def test_push(hub_server, tmp_path):
        model.push_to_hub("tester/tiny")                    # goes to the local server
        env = hub_env(hub_server, hf_home=tmp_path / "hf")   # for a fresh subprocess
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

#: The user that owns every token; ``create_repo("name")`` without a namespace lands here.
USER = "tester"
#: Any bearer token is accepted; this one is put into ``HF_TOKEN`` so that uploads send one.
TOKEN = "hf_dummy_token_for_local_tests"

# The real Hub stores files of 10 MB and more with LFS whatever their content, and binary files
# (git's heuristic: a NUL byte in the first bytes) with LFS through its default .gitattributes.
_LFS_MIN_SIZE = 10 * 1024 * 1024

_RepoPaths = dict[str, "_Blob"]


@dataclass(frozen=True)
class _Blob:
    """One file's content; ``lfs`` files are reported with their sha256 as the Hub does."""

    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def lfs_pointer(self) -> bytes:
        """The git-lfs pointer file that git would store in place of the content."""
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.content)}\n"
        ).encode()

    @property
    def git_oid(self) -> str:
        """The git blob id (sha1 of ``blob <size>\\0<data>``) of what git stores: the content or its pointer."""
        stored = self.lfs_pointer if self.lfs else self.content
        return hashlib.sha1(b"blob %d\0" % len(stored) + stored).hexdigest()

    @property
    def etag(self) -> str:
        """The Hub's ETag: sha256 for LFS files, git blob id otherwise; the cache names blobs after it."""
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class _Repo:
    """A model repository: every commit's full file map, so that old commit hashes keep resolving."""

    commits: dict[str, _RepoPaths] = field(default_factory=dict)
    head: str = ""
    last_modified: str = ""


class _HubState:
    """Everything the server stores. Requests arrive on many threads: writes take the lock, and reads
    need none because commits are only ever added, never changed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.repos: dict[str, _Repo] = {}
        # LFS objects are uploaded before the commit that references them, keyed by sha256.
        self.lfs_objects: dict[str, bytes] = {}

    def commit(self, repo: _Repo, files: _RepoPaths, message: str) -> str:
        """Record a new head commit; its id mixes in the time so that two servers never reuse a sha."""
        seed = json.dumps([repo.head, message, sorted((p, b.git_oid) for p, b in files.items()), time.time_ns()])
        sha = hashlib.sha1(seed.encode()).hexdigest()
        repo.commits[sha] = files
        repo.head = sha
        repo.last_modified = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        return sha


class _HubError(Exception):
    """An HTTP error with the ``X-Error-Code`` that ``hf_raise_for_status`` maps to an exception class."""

    def __init__(
        self,
        status: HTTPStatus,
        message: str,
        code: str | None = None,
        commit: str | None = None,
        body: dict | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.body = {"error": message, **(body or {})}
        # A missing file's 404 carries the commit so that the client caches the absence (``.no_exist``),
        # which lets offline loading skip optional files like ``processor_config.json``.
        self.commit = commit


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"/api/repos/create"), "_create_repo"),
    ("POST", re.compile(r"/api/validate-yaml"), "_validate_yaml"),
    ("POST", re.compile(rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)"), "_preupload"),
    ("POST", re.compile(rf"/{_REPO}\.git/info/lfs/objects/batch"), "_lfs_batch"),
    ("PUT", re.compile(r"/lfs-upload/(?P<oid>[0-9a-f]{64})"), "_lfs_upload"),
    ("POST", re.compile(rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)"), "_commit"),
    ("GET", re.compile(rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?"), "_repo_info"),
    ("GET", re.compile(rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?"), "_tree"),
    ("GET", re.compile(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "_resolve"),
    ("HEAD", re.compile(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "_resolve"),
]


class _HubHandler(BaseHTTPRequestHandler):
    """Routes each request to a ``_name`` method that returns ``(body, headers)`` or raises ``_HubError``."""

    # HTTP/1.1 keeps the client's pooled connections open; every response therefore sets Content-Length.
    protocol_version = "HTTP/1.1"
    state: _HubState  # set on the per-server subclass made by start_hub_server
    query: dict[str, str]  # the request's query parameters, last value wins

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        """Stay quiet: pytest would show one stderr line per request."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    # -- plumbing ----------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = self._read_body()
        for method, pattern, handler in _ROUTES:
            match = pattern.fullmatch(url.path)
            if method == self.command and match is not None:
                params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                try:
                    payload, headers = getattr(self, handler)(body=body, **params)
                except _HubError as err:
                    self._send_error(err)
                else:
                    self._send(HTTPStatus.OK, payload, headers)
                return
        self._send_error(_HubError(HTTPStatus.NOT_FOUND, f"{self.command} {url.path} is not implemented"))

    def _read_body(self) -> bytes:
        """Read the request body, which httpx streams chunked when it uploads a file object."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF that ends each chunk
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # optional trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: HTTPStatus, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_error(self, err: _HubError) -> None:
        headers = {"X-Error-Message": str(err)}
        if err.code is not None:
            headers["X-Error-Code"] = err.code
        if err.commit is not None:
            headers["X-Repo-Commit"] = err.commit
        self._send(err.status, err.body, headers)

    @property
    def _base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _get_repo(self, repo: str) -> _Repo:
        try:
            return self.state.repos[repo]
        except KeyError:
            raise _HubError(HTTPStatus.NOT_FOUND, f"Repository {repo} not found", "RepoNotFound") from None

    def _get_commit(self, repo: str, rev: str) -> tuple[str, _RepoPaths]:
        """Resolve ``main`` or a full commit sha; no other branches or tags exist here."""
        info = self._get_repo(repo)
        sha = info.head if rev == "main" else rev
        if sha not in info.commits:
            raise _HubError(HTTPStatus.NOT_FOUND, f"Revision {rev} not found in {repo}", "RevisionNotFound")
        return sha, info.commits[sha]

    # -- uploads -------------------------------------------------------------------------------------

    def _create_repo(self, body: bytes) -> tuple[dict, dict]:
        request = json.loads(body)
        if request.get("type", "model") != "model":
            raise _HubError(HTTPStatus.BAD_REQUEST, "Only model repositories are served")
        repo_id = f"{request.get('organization') or USER}/{request['name']}"
        answer = {"url": f"{self._base_url}/{repo_id}", "name": repo_id, "id": repo_id}
        with self.state.lock:
            if repo_id in self.state.repos:
                # create_repo(exist_ok=True), which push_to_hub uses, lets a 409 pass and then reads its
                # body as if the repo had just been made, so the conflict carries the same answer.
                raise _HubError(HTTPStatus.CONFLICT, "You already created this model repo", body=answer)
            repo = self.state.repos[repo_id] = _Repo()
            # Like the Hub, a new repo has one commit, so that "main" resolves before the first upload.
            self.state.commit(repo, {}, "initial commit")
        return answer, {}

    def _validate_yaml(self, body: bytes) -> tuple[dict, dict]:
        """Accept every model card: its metadata is not what these tests check."""
        return {"errors": [], "warnings": []}, {}

    def _preupload(self, body: bytes, repo: str, rev: str) -> tuple[dict, dict]:
        self._get_commit(repo, rev)
        files = []
        for entry in json.loads(body)["files"]:
            binary = b"\0" in base64.b64decode(entry["sample"])
            mode = "lfs" if binary or entry["size"] >= _LFS_MIN_SIZE else "regular"
            files.append({"path": entry["path"], "uploadMode": mode, "shouldIgnore": False})
        return {"files": files}, {}

    def _lfs_batch(self, body: bytes, repo: str) -> tuple[dict, dict]:
        self._get_repo(repo)
        objects = []
        for obj in json.loads(body)["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            # Objects already stored get no "actions": the client then skips their upload.
            if obj["oid"] not in self.state.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self._base_url}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        return {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}

    def _lfs_upload(self, body: bytes, oid: str) -> tuple[bytes, dict]:
        if hashlib.sha256(body).hexdigest() != oid:
            raise _HubError(HTTPStatus.BAD_REQUEST, "Uploaded content does not match its sha256")
        with self.state.lock:
            self.state.lfs_objects[oid] = body
        return b"", {}

    def _commit(self, body: bytes, repo: str, rev: str) -> tuple[dict, dict]:
        if rev != "main":
            raise _HubError(HTTPStatus.BAD_REQUEST, "Only commits to main are supported")
        with self.state.lock:
            info = self._get_repo(repo)
            files = dict(info.commits[info.head])
            message = ""
            for line in body.splitlines():
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    message = value["summary"]
                elif key == "file":
                    files[value["path"]] = _Blob(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    if value["oid"] not in self.state.lfs_objects:
                        raise _HubError(HTTPStatus.BAD_REQUEST, f"LFS object {value['oid']} was never uploaded")
                    files[value["path"]] = _Blob(self.state.lfs_objects[value["oid"]], lfs=True)
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: b for p, b in files.items() if not p.startswith(prefix)}
                else:
                    raise _HubError(HTTPStatus.BAD_REQUEST, f"Unsupported commit operation {key!r}")
            sha = self.state.commit(info, files, message)
        return {"commitUrl": f"{self._base_url}/{repo}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None}, {}

    # -- reads ---------------------------------------------------------------------------------------

    def _repo_info(self, body: bytes, repo: str, rev: str = "main") -> tuple[dict, dict]:
        sha, files = self._get_commit(repo, rev)
        info = {
            "id": repo,
            "modelId": repo,
            "author": repo.split("/")[0],
            "sha": sha,
            "lastModified": self.state.repos[repo].last_modified,
            "private": False,
            "disabled": False,
            "gated": False,
            "tags": [],
            "siblings": [{"rfilename": path} for path in sorted(files)],
        }
        # pipeline(model=repo_id) without a task reads the task from here, as the Hub takes it from the card.
        info.update(_card_metadata(files.get("README.md")))
        return info, {}

    def _tree(self, body: bytes, repo: str, rev: str, path: str = "") -> tuple[list, dict]:
        _, files = self._get_commit(repo, rev)
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        recursive = self.query.get("recursive", "false").lower() == "true"
        entries: dict[str, dict] = {}
        for file_path, blob in sorted(files.items()):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            # Folders are implicit in a file map: report each parent folder once, as git trees would.
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folder = prefix + "/".join(parts[:depth])
                entries.setdefault(folder, {"type": "directory", "path": folder, "oid": _folder_oid(folder)})
            if recursive or len(parts) == 1:
                entries[file_path] = _file_entry(file_path, blob)
        if prefix and not entries:
            raise _HubError(HTTPStatus.NOT_FOUND, f"{path} does not exist in {repo}", "EntryNotFound")
        return list(entries.values()), {}

    def _resolve(self, body: bytes, repo: str, rev: str, path: str) -> tuple[bytes, dict]:
        sha, files = self._get_commit(repo, rev)
        if path not in files:
            raise _HubError(HTTPStatus.NOT_FOUND, f"{path} does not exist in {repo}", "EntryNotFound", commit=sha)
        blob = files[path]
        headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": sha, "ETag": f'"{blob.etag}"'}
        if blob.lfs:
            # The Hub redirects LFS downloads to a CDN and names the real object in these headers; serving the
            # bytes directly with the same headers leaves the client's cache layout identical.
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(len(blob.content))
        return blob.content, headers


def _file_entry(path: str, blob: _Blob) -> dict:
    """A tree entry in the JSON shape that ``huggingface_hub.hf_api.RepoFile`` parses."""
    entry: dict[str, Any] = {"type": "file", "path": path, "size": len(blob.content), "oid": blob.git_oid}
    if blob.lfs:
        entry["lfs"] = {"oid": blob.sha256, "size": len(blob.content), "pointerSize": len(blob.lfs_pointer)}
    return entry


def _folder_oid(path: str) -> str:
    """A stable 40-hex id for a folder; clients only parse it, they never check it."""
    return hashlib.sha1(f"tree {path}".encode()).hexdigest()


def _card_metadata(readme: _Blob | None) -> dict[str, str]:
    """``pipeline_tag`` and ``library_name`` from a README's YAML front matter (plain ``key: value`` lines)."""
    if readme is None:
        return {}
    text = readme.content.decode("utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    header = text[3:].split("\n---", 1)[0]
    metadata = {}
    for line in header.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("pipeline_tag", "library_name") and value.strip():
            metadata[key.strip()] = value.strip().strip("'\"")
    return metadata


def start_hub_server() -> tuple[str, Callable[[], None]]:
    """Start a fresh, empty hub on 127.0.0.1 (ephemeral port) in a daemon thread.

    Returns the base URL to use as ``HF_ENDPOINT`` and a function that stops the server.
    """
    handler = type("_BoundHubHandler", (_HubHandler,), {"state": _HubState()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True  # kept-alive client connections must not block shutdown
    # A short poll interval makes shutdown() return quickly at the end of each test.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="hub-server", daemon=True)
    thread.start()
    host, port = server.server_address[:2]

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return f"http://{host}:{port}", stop


def hub_env(url: str, hf_home: str | os.PathLike[str], *, offline: bool = False) -> dict[str, str]:
    """Environment for a subprocess that loads from the server at ``url`` (or, ``offline``, from its cache).

    ``hf_home`` holds the download cache and ``HF_MODULES_CACHE`` (remote code), so a second
    subprocess with the same ``hf_home`` and ``offline=True`` finds what the first one downloaded.
    """
    hf_home = Path(hf_home)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(
        HF_ENDPOINT=url,
        HF_TOKEN=TOKEN,
        HF_HOME=str(hf_home),
        HF_MODULES_CACHE=str(hf_home / "modules"),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture
def hub_server(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running local hub, with this process's ``huggingface_hub`` and ``transformers`` pointed at it.

    ``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HUB_DISABLE_XET`` and the cache folder into constants
    when it is imported, and ``transformers`` keeps one ``HfApi`` whose endpoint is fixed when it is
    made, so besides the environment (for ``HF_TOKEN`` and child processes) the fixture patches those
    values for the duration of the test. Yields the server's base URL.
    """
    import huggingface_hub.hf_api as hf_api_module
    from huggingface_hub import constants
    from transformers.utils import hub as transformers_hub

    url, stop = start_hub_server()
    cache = tmp_path_factory.mktemp("hub_cache")
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    # push_to_hub downloads the existing model card; keep it out of the developer's real cache.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    # The module-level functions (huggingface_hub.create_repo, upload_folder, ...) are methods of this instance.
    monkeypatch.setattr(hf_api_module.api, "endpoint", url)
    monkeypatch.setattr(transformers_hub, "_hf_api", None)
    try:
        yield url
    finally:
        stop()
