"""The Hugging Face Hub download protocol, so ``huggingface_hub`` and ``transformers`` work with
``HF_ENDPOINT`` pointing at the hub.

- ``GET /api/models/{repo}[/revision/{rev}]``: repo info (public, ``gated: "manual"``);
- ``GET /api/models/{repo}/tree/{rev}[/{path}]``: the file listing (public);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: a file, behind our license gates. No token: 401;
  a token whose user fails the gates (license not accepted, MAU, acceptable use): 403 with our
  reason; both with ``X-Error-Code: GatedRepo``, which the client raises as GatedRepoError.
  Our API tokens are the HF tokens (``HF_TOKEN=<token>``).

Errors carry ``X-Error-Code`` (RepoNotFound, GatedRepo, RevisionNotFound, EntryNotFound) and
``X-Error-Message``: the client maps on those headers, a HEAD answer has no body. Paths are split
on the RAW request path before decoding, since revisions such as ``refs%2Fpr%2F1`` arrive encoded.
Repos are described in :mod:`llamahub.hub.hf_repos`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llamahub.hub import hf_repos
from llamahub.hub import models as m
from llamahub.hub.accounts import gate_grants, gate_profile
from llamahub.hub.blobserve import FILE_RESPONSES, blob_response
from llamahub.hub.context import HubContext
from llamahub.hub.deps import MAX_TOKEN, Ctx, User
from llamahub.hub.errors import HubError
from llamahub.hub.hf_repos import Repo, RepoFile
from llamahub.hub.links import MAX_PATH, parse_range
from llamahub.policy import check

router = APIRouter(tags=["huggingface"], responses=m.ERRORS)


class HfError(HubError):
    """An error the HF client maps by its ``X-Error-Code`` header."""

    def __init__(self, status: int, hf_code: str | None, message: str, *, code: str, hint: str,
                 commit: str | None = None) -> None:
        super().__init__(message, hint=hint, code=code, status=status)
        self.headers = {"X-Error-Message": _header_text(message)}
        if hf_code:
            self.headers["X-Error-Code"] = hf_code
        if commit:
            self.headers["X-Repo-Commit"] = commit


def _header_text(text: str, limit: int = 400) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit]).strip()


def _raw_path(request: Request, prefix: str = "/") -> str:
    raw = request.scope.get("raw_path") or request.url.path.encode("utf-8")
    if len(raw) > MAX_PATH:
        raise HfError(404, "EntryNotFound", f"the path is longer than {MAX_PATH} bytes",
                      code="bad_path", hint="use a repo id and a file path of the repo")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    return text[len(prefix):] if text.startswith(prefix) else ""


def _not_found(repo_id: str) -> HfError:
    return HfError(404, "RepoNotFound", f"Repository Not Found for {repo_id!r} on this hub",
                   code="repo_not_found", hint="GET /api/health counts the imported variants; "
                   "`llamahub variants` lists their repo ids (hf_repo)")


def _repo(ctx: HubContext, repo_id: str) -> Repo:
    repo = hf_repos.find_repo(ctx, repo_id)
    if repo is None:
        raise _not_found(repo_id)
    return repo


def _revision(repo: Repo, revision: str) -> str:
    if not repo.resolves(revision):
        raise HfError(404, "RevisionNotFound", f"Invalid rev id: {revision} (repo {repo.id})",
                      code="revision_not_found",
                      hint=f"use the branch {hf_repos.MAIN} or the commit {repo.commit}")
    return repo.commit


def _iso(value: str) -> str:
    """An ISO date as the HF client parses it: UTC with a ``Z``."""
    when = dt.datetime.fromisoformat(value).astimezone(dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


# --- who, repo info and tree ------------------------------------------------------------------


@router.get("/api/whoami-v2", response_model=None)
def whoami(user: User) -> dict[str, Any]:
    """The token's user, as ``hf auth whoami`` and ``hf auth login`` ask (our API token is the HF token)."""
    return {"type": "user", "id": user["id"], "name": user["id"], "fullname": user["name"],
            "email": user["email"], "emailVerified": False, "isPro": False, "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "llamahub", "role": "read"}}}


@router.get("/api/models/{repo_path:path}", response_model=None,
            responses={200: {"description": "repo info, or the tree listing (a JSON array)"}})
def models_api(request: Request, ctx: Ctx, repo_path: str, recursive: str = "false") -> Any:
    """Repo info (``/api/models/{repo}[/revision/{rev}]``), the file tree
    (``/api/models/{repo}/tree/{rev}[/{path}]``), the refs (``/api/models/{repo}/refs``) and the
    history (``/api/models/{repo}/commits/{rev}``), public as on the Hugging Face Hub."""
    parts = hf_repos.segments(_raw_path(request, "/api/models/"))
    split = hf_repos.split_repo(parts, ("revision", "tree", "refs", "commits")) if parts else None
    if split is None:
        raise _not_found(repo_path[:200])
    repo_id, keyword, rest = split
    repo = _repo(ctx, repo_id)
    if keyword is None:
        return _info(ctx, repo)
    if keyword == "refs":
        if rest:
            raise _not_found(repo_id)
        return _refs(repo, "include_prs" in request.query_params)
    if not rest:
        raise HfError(404, "RevisionNotFound", f"{keyword} needs a revision", code="revision_not_found",
                      hint=f"GET /api/models/{repo.id}/{keyword}/main")
    revision = rest[0]
    if keyword in ("revision", "commits"):
        if len(rest) != 1:
            raise _not_found(repo_id)
        _revision(repo, revision)
        return _info(ctx, repo) if keyword == "revision" else _commits(repo)
    commit = _revision(repo, revision)
    return _tree(repo, commit, "/".join(rest[1:]), recursive.lower() in ("1", "true"))


def _info(ctx: HubContext, repo: Repo) -> dict[str, Any]:
    v = repo.variant
    when = _iso(repo.imported_at)
    return {
        "_id": repo.commit[:24], "id": repo.id, "modelId": repo.id, "author": repo.id.partition("/")[0],
        "sha": repo.commit, "private": False, "gated": "manual", "disabled": False,
        "downloads": hf_repos.downloads(ctx, repo.id), "likes": 0, "lastModified": when, "createdAt": when,
        "library_name": "transformers" if repo.layout == "hf" else "llama",
        "pipeline_tag": "text-generation",
        "tags": ["llama", "text-generation", v.family, f"license:{v.license}"],
        "config": {"architectures": ["LlamaForCausalLM"], "model_type": "llama"},
        "siblings": [{"rfilename": f.path, "size": f.size, "blobId": f.oid,
                      "lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}}
                     for f in repo.files],
        "llamahub": {"variant": v.name, "family": v.family, "license": v.license, "layout": repo.layout,
                     "accept": f"/api/licenses/{v.license}/accept"},
    }


def _refs(repo: Repo, with_prs: bool) -> dict[str, Any]:
    """One branch, ``main``, at the commit of what is imported; no tags, conversions or PRs."""
    main = {"name": hf_repos.MAIN, "ref": f"refs/heads/{hf_repos.MAIN}", "targetCommit": repo.commit}
    refs: dict[str, Any] = {"branches": [main], "converts": [], "tags": []}
    return refs | ({"pullRequests": []} if with_prs else {})


def _commits(repo: Repo) -> list[dict[str, Any]]:
    """The history of a repo: the one commit of its import (a re-import makes a new one)."""
    title = f"Import {repo.variant.name} ({repo.layout} layout)"
    return [{"id": repo.commit, "authors": [{"user": "llamahub"}], "date": _iso(repo.imported_at),
             "title": title, "message": ""}]


def _tree(repo: Repo, commit: str, path: str, recursive: bool) -> JSONResponse:
    prefix = f"{path}/" if path else ""
    inside = [f for f in repo.files if f.path.startswith(prefix)]
    if path and not inside:
        raise HfError(404, "EntryNotFound", f"no folder {path!r} in {repo.id} at {commit}",
                      code="entry_not_found", hint=f"GET /api/models/{repo.id}/tree/main lists the files",
                      commit=commit)
    entries: dict[str, dict[str, Any]] = {}
    for f in inside:
        rel = f.path[len(prefix):]
        if recursive or "/" not in rel:
            entries[f.path] = _file_entry(f)
        folder = prefix + rel.partition("/")[0]
        dirs = [prefix + "/".join(rel.split("/")[:i]) for i in range(1, rel.count("/") + 1)]
        for d in dirs if recursive else ([folder] if "/" in rel else []):
            entries.setdefault(d, {"type": "directory", "path": d, "oid": _dir_oid(commit, d), "size": 0})
    return JSONResponse([entries[k] for k in sorted(entries)])


def _file_entry(f: RepoFile) -> dict[str, Any]:
    return {"type": "file", "path": f.path, "size": f.size, "oid": f.oid,
            "lfs": {"oid": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}}


def _dir_oid(commit: str, path: str) -> str:
    import hashlib

    return hashlib.sha1(f"{commit}:{path}".encode()).hexdigest()


# --- files -------------------------------------------------------------------------------------


@router.api_route("/{namespace}/{name}/resolve/{rest:path}", methods=["GET", "HEAD"], response_model=None,
                  responses=FILE_RESPONSES)
def resolve_namespaced(request: Request, ctx: Ctx, namespace: str, name: str, rest: str) -> Response:
    """A file of repo ``namespace/name`` at a revision, once the license gates let the token's user."""
    return _resolve(request, ctx)


@router.api_route("/{name}/resolve/{rest:path}", methods=["GET", "HEAD"], response_model=None,
                  responses=FILE_RESPONSES)
def resolve_plain(request: Request, ctx: Ctx, name: str, rest: str) -> Response:
    """A file of the one-segment repo ``name`` at a revision (as ``gpt2`` on the Hugging Face Hub)."""
    return _resolve(request, ctx)


def _resolve(request: Request, ctx: HubContext) -> Response:
    parts = hf_repos.segments(_raw_path(request))
    split = hf_repos.split_repo(parts, ("resolve",)) if parts else None
    if split is None or not split[2]:
        raise _not_found(_raw_path(request)[:200])
    repo_id, _, rest = split
    repo = _repo(ctx, repo_id)
    user = _gate(request, ctx, repo)
    commit = _revision(repo, rest[0])
    path = "/".join(rest[1:])
    f = repo.file(path)
    if f is None:
        raise HfError(404, "EntryNotFound", f"{path!r} does not exist in {repo.id} at {commit}",
                      code="entry_not_found", hint=f"GET /api/models/{repo.id}/tree/main lists the files",
                      commit=commit)
    return _serve(request, ctx, repo, f, commit, user)


def _gate(request: Request, ctx: HubContext, repo: Repo) -> dict[str, Any]:
    """The token's user, if our license gates let them have ``repo``; else a GatedRepo error."""
    v = repo.variant
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()[:MAX_TOKEN]
    if scheme.lower() != "bearer" or not token:
        raise HfError(401, "GatedRepo", f"Access to model {repo.id} is restricted. You must have access to "
                      "it and be authenticated to access it. Please log in.", code="unauthorized",
                      hint="send your llamahub API token as your Hugging Face token (HF_TOKEN=<token>, "
                           f"or `hf auth login`), after accepting the {v.license} license")
    owner = ctx.store.token_owner(token)
    if owner is None:
        raise HfError(401, None, "Invalid credentials in Authorization header", code="invalid_token",
                      hint="send an API token of this hub (POST /api/users returns one)")
    role, user = owner
    if role != "user" or user is None:
        raise HfError(403, "GatedRepo", f"Access to model {repo.id} is restricted: an admin token does "
                      "not act as a user", code="user_required", hint="use a user's API token")
    decision = check(gate_profile(ctx, user), v, gate_grants(ctx, user["organisation"]), ctx.now())
    if not decision.allowed:
        ctx.store.record(f"user:{user['id']}", "hf.refuse", repo.id, code=decision.code)
        hint = decision.hint or "see GET /api/licenses/status"
        raise HfError(403, "GatedRepo", f"Access to model {repo.id} is restricted: {decision.message}. "
                      f"To get access: {hint}", code=decision.code, hint=hint)
    return user


def _serve(request: Request, ctx: HubContext, repo: Repo, f: RepoFile, commit: str,
           user: dict[str, Any]) -> Response:
    etag = f'"{f.sha256}"'
    span = parse_range(request.headers.get("range"), f.size)
    if_range = request.headers.get("if-range")
    if span is not None and if_range is not None and if_range.strip() != etag:
        span = None
    row = {"size": f.size, "sha256": f.sha256, "md5": f.md5}
    if request.method == "HEAD":
        response = blob_response(row, span, etag, None)
    else:
        start, length = (span[0], span[1] - span[0] + 1) if span else (0, f.size)
        if start == 0:
            ctx.store.record(f"user:{user['id']}", "hf.download", repo.id, path=f.path, commit=commit,
                             variant=repo.variant.name, bytes=length)
        response = blob_response(row, span, etag, ctx.blobs.reader(f.sha256, start, length))
    response.headers.update({"X-Repo-Commit": commit, "X-Linked-Etag": etag, "X-Linked-Size": str(f.size)})
    return response
