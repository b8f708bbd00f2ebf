"""A Hub-compatible HTTP server on 127.0.0.1 for tests: the part of the Hub API that `huggingface_hub` uses to create
a repo, validate a model card, upload a folder (regular uploads, no LFS), make a branch, and download (`repo_info`, `list_repo_tree`,
`snapshot_download`, `hf_hub_download`). Repositories live in memory as commits of `{path: bytes}`; every request
is logged so tests can count downloads. Standard library only; the server stops when its context exits, and by
itself after `lifetime_s` seconds if a test never exits it."""

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class HubRepo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None

    def commit(self, branch: str, files: dict[str, bytes], message: str) -> str:
        parent = self.branches.get(branch, "")
        digest = hashlib.sha1(f"{parent}\n{message}\n{len(self.commits)}".encode())
        for path in sorted(files):
            digest.update(f"{path}:{git_blob_id(files[path])}\n".encode())
        sha = digest.hexdigest()
        self.commits[sha] = files
        self.branches[branch] = sha
        return sha


class HubHandler(BaseHTTPRequestHandler):
    server: "HubServer"

    def log_message(self, format, *args):
        pass

    def reply(self, status: int, body: bytes = b"", headers: dict | None = None, error_code: str | None = None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if error_code is not None:
            self.send_header("X-Error-Code", error_code)
            self.send_header("X-Error-Message", error_code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def reply_json(self, payload, status: int = 200):
        self.reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def find(self, repo_id: str, revision: str | None) -> tuple[HubRepo, str] | None:
        """The repo and the commit a revision names, or `None` after replying 404 as the Hub does."""
        repo = self.server.repos.get(repo_id)
        if repo is None:
            self.reply(404, f"Repository {repo_id} not found".encode(), error_code="RepoNotFound")
            return None
        sha = repo.resolve(revision or "main")
        if sha is None:
            self.reply(404, f"Invalid rev id: {revision}".encode(), error_code="RevisionNotFound")
            return None
        return repo, sha

    def handle_request(self):
        path = unquote(urlsplit(self.path).path)
        self.server.log.append((self.command, path))
        routes = [
            ("POST", r"/api/repos/create", self.create_repo),
            ("POST", r"/api/validate-yaml", self.validate_yaml),
            ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)(/revision/(?P<rev>.+))?", self.repo_info),
            ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(/(?P<sub>.*))?", self.tree),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>.+)", self.preupload),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>.+)", self.commit),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<branch>.+)", self.create_branch),
            ("GET|HEAD", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self.resolve),
        ]
        for methods, pattern, route in routes:
            match = re.fullmatch(pattern, path)
            if match and self.command in methods.split("|"):
                with self.server.lock:
                    return route(**match.groupdict())
        self.reply(404, f"The test Hub does not serve {self.command} {path}".encode())

    do_GET = do_HEAD = do_POST = handle_request

    def create_repo(self):
        payload = json.loads(self.read_body())
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self.server.url}/{repo_id}"
        if repo_id in self.server.repos:
            body = json.dumps({"error": "You already created this model repo", "url": url}).encode()
            return self.reply(409, body, {"Content-Type": "application/json"}, error_code="RepoExists")
        repo = HubRepo()
        repo.commit("main", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}, "initial commit")
        self.server.repos[repo_id] = repo
        self.reply_json({"url": url, "name": repo_id})

    def validate_yaml(self):
        self.read_body()
        self.reply_json({"errors": [], "warnings": []})

    def repo_info(self, repo: str, rev: str | None):
        found = self.find(repo, rev)
        if found:
            hub_repo, sha = found
            files = sorted(hub_repo.commits[sha])
            self.reply_json({"id": repo, "modelId": repo, "sha": sha, "private": False, "siblings": [{"rfilename": f} for f in files]})

    def tree(self, repo: str, rev: str, sub: str | None):
        found = self.find(repo, rev)
        if found:
            hub_repo, sha = found
            files = hub_repo.commits[sha]
            prefix = f"{sub.strip('/')}/" if sub else ""
            entries, folders = [], set()
            for path in sorted(files):
                if not path.startswith(prefix):
                    continue
                parts = path.split("/")
                folders.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
                entries.append({"type": "file", "path": path, "size": len(files[path]), "oid": git_blob_id(files[path])})
            entries += [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0} for f in sorted(folders)]
            self.reply_json(entries)

    def preupload(self, repo: str, rev: str):
        found = self.find(repo, rev)
        if found:
            hub_repo, sha = found
            existing = hub_repo.commits[sha]
            files = json.loads(self.read_body())["files"]
            self.reply_json({"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                 "oid": git_blob_id(existing[f["path"]]) if f["path"] in existing else None}
                for f in files
            ]})

    def commit(self, repo: str, rev: str):
        found = self.find(repo, rev)
        if found is None:
            return
        hub_repo, sha = found
        if rev not in hub_repo.branches:
            return self.reply(400, f"Can only commit to a branch, not to {rev}".encode(), error_code="BadRequest")
        files = dict(hub_repo.commits[sha])
        message = ""
        for line in self.read_body().splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                message = value["summary"]
            elif item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
            elif item["key"] == "deletedFolder":
                files = {p: c for p, c in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:
                return self.reply(400, f"The test Hub does not handle {item['key']} operations".encode(), error_code="BadRequest")
        new_sha = hub_repo.commit(rev, files, message)
        self.reply_json({"commitUrl": f"{self.server.url}/{repo}/commit/{new_sha}", "commitOid": new_sha, "pullRequestUrl": None})

    def create_branch(self, repo: str, branch: str):
        body = self.read_body()
        start = json.loads(body).get("startingPoint") if body else None
        found = self.find(repo, start)
        if found:
            hub_repo, sha = found
            if branch in hub_repo.branches:
                return self.reply(409, f"Branch {branch} already exists".encode(), error_code="BranchExists")
            hub_repo.branches[branch] = sha
            self.reply_json({})

    def resolve(self, repo: str, rev: str, file: str):
        found = self.find(repo, rev)
        if found is None:
            return
        hub_repo, sha = found
        content = hub_repo.commits[sha].get(file)
        if content is None:
            return self.reply(404, f"Entry {file} not found".encode(), {"X-Repo-Commit": sha}, error_code="EntryNotFound")
        headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_id(content)}"', "Content-Type": "application/octet-stream"}
        byte_range = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if byte_range and self.command == "GET":
            start = int(byte_range.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
            return self.reply(206, content[start:], headers)
        self.reply(200, content, headers)


class HubServer(ThreadingHTTPServer):
    """`with HubServer() as hub:` serves at `hub.url`; `hub.log` lists `(method, path)` of every request."""

    daemon_threads = True

    def __init__(self, lifetime_s: float = 900.0):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.repos: dict[str, HubRepo] = {}
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.stop_timer = threading.Timer(lifetime_s, self.shutdown)
        self.stop_timer.daemon = True

    def __enter__(self) -> "HubServer":
        self.thread.start()
        self.stop_timer.start()
        return self

    def __exit__(self, *exc_info):
        self.stop_timer.cancel()
        self.shutdown()
        self.server_close()

    def downloads(self, suffix: str = "") -> list[str]:
        """Paths of the files sent with GET (not HEAD) whose names end with `suffix`."""
        return [path for method, path in self.log if method == "GET" and "/resolve/" in path and path.endswith(suffix)]
