"""A local stand-in for the Hub endpoints that huggingface_hub 2.4's ``create_repo`` + ``upload_folder`` call.

Read from huggingface_hub 2.4.0 (hf_api.py, _commit_api.py, _upload_pipeline.py):

    POST /api/repos/create                         create_repo; body {name, organization, type, visibility}
    GET  /api/{kind}/{ns}/{name}[/revision/{rev}]  repo_info: create_repo(exist_ok=True) retries with it on 401/403
    POST /api/validate-yaml                        upload_folder checks README.md's front matter before hashing
    GET  /api/{kind}/{ns}/{name}/tree/{rev}        list_repo_files, which delete_patterns needs
    POST /api/{kind}/{ns}/{name}/preupload/{rev}   the upload mode of each file, "regular" or "lfs"
    POST /api/{kind}/{ns}/{name}/commit/{rev}      NDJSON: a header line, then one line per added/deleted file

The preupload answer alone picks the transport. "regular" files travel inline, base64, in the commit NDJSON. Any
other answer sends the file through Xet (hf_xet installed: upload_folder's streamed ``pipelined_upload``) or the LFS
batch API (``HF_HUB_DISABLE_XET=1``: the legacy ``create_commit`` path); neither exists here. So the double answers
"regular" for every file, and refuses ``lfsFile`` lines so that a regression to those transports fails loudly.
Every request must carry ``Authorization: Bearer <token>``; otherwise the answer is the Hub's own 401.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

# huggingface_hub tells a bad token from a missing repo by this exact message (utils/_http.py hf_raise_for_status).
BAD_CREDENTIALS = "Invalid credentials in Authorization header"


@dataclass
class Repo:
    repo_type: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    head: str = "0" * 40


@dataclass
class Commit:
    repo_id: str
    revision: str
    summary: str
    added: dict[str, bytes]
    deleted: list[str]
    oid: str


@dataclass
class HubState:
    repos: dict[str, Repo] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # "METHOD /path -> status", in arrival order


class HubDouble:
    """The double served by uvicorn on 127.0.0.1 (free port) in a daemon thread; use as a context manager."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.state = HubState()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))  # the OS picks a free port; uvicorn serves on this very socket
        self.endpoint = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(_build_app(self), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> HubDouble:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the Hub double did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def reset(self) -> None:
        self.state = HubState()


def _error(status: int, message: str, code: str | None = None) -> JSONResponse:
    headers = {"X-Error-Message": message} | ({"X-Error-Code": code} if code else {})
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _build_app(hub: HubDouble) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def check_token(request: Request, call_next: Any) -> Any:
        if request.headers.get("authorization") != f"Bearer {hub.token}":
            response = _error(401, BAD_CREDENTIALS)
        else:
            response = await call_next(request)
        hub.state.requests.append(f"{request.method} {request.url.path} -> {response.status_code}")
        return response

    @app.post("/api/repos/create")
    async def create_repo(request: Request) -> Any:
        body = await request.json()
        repo_id = f"{body.get('organization') or 'user'}/{body['name']}"
        kind = body.get("type") or "model"
        url = f"{hub.endpoint}/{'' if kind == 'model' else kind + 's/'}{repo_id}"
        if repo_id in hub.state.repos:
            return JSONResponse({"error": "You already created this repo", "url": url}, status_code=409)
        hub.state.repos[repo_id] = Repo(repo_type=kind, private=body.get("visibility") == "private")
        return {"url": url, "name": repo_id, "id": repo_id}

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request) -> Any:
        content = (await request.json())["content"]
        try:
            yaml.safe_load(content.split("---")[1]) if content.startswith("---") else None
        except (yaml.YAMLError, IndexError) as err:
            return JSONResponse({"errors": [{"message": str(err)}]}, status_code=400)
        return {"errors": [], "warnings": []}

    @app.get("/api/{kind}/{ns}/{name}")
    @app.get("/api/{kind}/{ns}/{name}/revision/{revision}")
    async def repo_info(kind: str, ns: str, name: str, revision: str = "main") -> Any:
        repo = hub.state.repos.get(f"{ns}/{name}")
        if repo is None:
            return _error(404, "Repository not found", "RepoNotFound")
        return {"id": f"{ns}/{name}", "private": repo.private, "sha": repo.head}

    @app.get("/api/{kind}/{ns}/{name}/tree/{revision}")
    async def tree(kind: str, ns: str, name: str, revision: str) -> Any:
        repo = hub.state.repos.get(f"{ns}/{name}")
        if repo is None:
            return _error(404, "Repository not found", "RepoNotFound")
        return [
            {"type": "file", "path": path, "oid": hashlib.sha1(data).hexdigest(), "size": len(data)}
            for path, data in sorted(repo.files.items())
        ]

    @app.post("/api/{kind}/{ns}/{name}/preupload/{revision}")
    async def preupload(kind: str, ns: str, name: str, revision: str, request: Request) -> Any:
        if f"{ns}/{name}" not in hub.state.repos:
            return _error(404, "Repository not found", "RepoNotFound")
        files = (await request.json())["files"]
        return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}

    @app.post("/api/{kind}/{ns}/{name}/commit/{revision}")
    async def commit(kind: str, ns: str, name: str, revision: str, request: Request) -> Any:
        repo = hub.state.repos.get(f"{ns}/{name}")
        if repo is None:
            return _error(404, "Repository not found", "RepoNotFound")
        body = await request.body()
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return _error(400, "the commit payload must start with a header line")
        added, deleted = {}, []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file" and value.get("encoding") == "base64":
                added[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:  # lfsFile would point at bytes sent elsewhere (Xet/LFS), which this double never receives
                return _error(400, f"the Hub double accepts only inline base64 files, got a {key!r} line")
        for path in deleted:
            for existing in [p for p in repo.files if p == path or p.startswith(path.rstrip("/") + "/")]:
                del repo.files[existing]
        repo.files.update(added)
        repo.head = hashlib.sha1(body).hexdigest()
        summary = lines[0]["value"]["summary"]
        hub.state.commits.append(Commit(f"{ns}/{name}", revision, summary, added, deleted, repo.head))
        url = f"{hub.endpoint}/{kind}/{ns}/{name}/commit/{repo.head}"
        return {"commitUrl": url, "commitOid": repo.head, "success": True}

    return app
