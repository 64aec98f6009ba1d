"""Older Daytona SDKs that popular integrations pin, against a real `corral serve`:
- the Python SDK 0.194 (daytona-adk pins daytona>=0.194,<0.195): tests/py-0194/smoke.py, in
  its own venv (.venv-0194, made by scripts/test.sh from tests/py-0194/requirements.txt);
- the TypeScript SDK 0.143 (@mastra/daytona and @langchain/daytona pin @daytonaio/sdk
  ^0.143.0): tests/ts-0143/smoke.test.mjs, pinned by tests/ts-0143/package-lock.json.
Each covers what its integrations call, the routes only old SDKs use (offset-paged list), and
the error wording integrations match on ("timed out", "file not found")."""

import os
import shutil
import subprocess

import pytest

from conftest import REPO

VENV_0194 = os.environ.get("CORRAL_VENV_0194", str(REPO / ".venv-0194"))
TS_0143 = REPO / "tests/ts-0143"


def missing(msg):
    if os.environ.get("CORRAL_E2E_STRICT"):
        pytest.fail(msg)
    pytest.skip(msg)


def run(argv, server, cwd, mark):
    env = dict(os.environ, CORRAL_API_URL=f"{server.url}/api", CORRAL_API_KEY=server.key,
               CORRAL_SMOKE_LABEL=mark)
    # Not the main venv's SDK settings or paths.
    for k in ("DAYTONA_USE_DEPRECATED_POLLING", "PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(k, None)
    p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout + p.stderr


def test_python_sdk_0194(server):
    python = os.path.join(VENV_0194, "bin", "python")
    if not os.path.exists(python):
        missing(f"{VENV_0194} missing (scripts/test.sh creates it from tests/py-0194/requirements.txt)")
    code, report = run([python, str(REPO / "tests/py-0194/smoke.py")], server, REPO, "py0194")
    assert code == 0, report
    steps = [l.split()[1] for l in report.splitlines() if l.startswith("ok ")]
    assert steps == ["create", "code_run", "upload_exec_delete", "exec_cwd", "files_up_down", "session",
                     "pty", "dirs", "exec_timeout_wording", "missing_file_wording", "list_get", "delete"], report


def test_typescript_sdk_0143(server):
    if shutil.which("node") is None or not (TS_0143 / "node_modules/@daytonaio/sdk").exists():
        missing("node or tests/ts-0143/node_modules missing (scripts/test.sh installs them with npm ci)")
    code, report = run(["node", "--test", "--test-reporter=tap", "smoke.test.mjs"], server, TS_0143, "ts0143")
    assert code == 0, report
    # Every test ran (none skipped or filtered away).
    assert "# fail 0" in report and "# pass 9" in report and "# todo 0" in report, report


def test_old_sdk_routes_have_daytonas_wire(server):
    """The main-API routes only old SDKs call, raw: the fields their models require."""
    status, me = server.request("GET", "/api/users/me")
    assert status == 200 and {"id", "name", "email", "publicKeys", "createdAt"} <= set(me), me
    for path in ("/api/shared-regions", "/api/regions"):
        status, regions = server.request("GET", path)
        assert status == 200 and [r["id"] for r in regions] == ["local"], regions
        assert regions[0]["regionType"] == "shared" and regions[0]["createdAt"], regions
    status, page = server.request("GET", "/api/sandbox/paginated?page=1&limit=5")
    assert status == 200 and set(page) == {"items", "total", "page", "totalPages"}, page
    for query, named in [("page=0", "page"), ("limit=1000", "limit"), ("sort=cpu", "sort"),
                         ("order=up", "order"), ("cursor=x", "cursor")]:
        status, body = server.request("GET", f"/api/sandbox/paginated?{query}")
        assert status == 400 and named in body["message"], (query, body)
        assert body["statusCode"] == 400 and body["error"] == "Bad Request", body
    # The pre-sandbox workspace API: a clear refusal naming the SDKs that are served.
    for method, path in [("GET", "/api/workspace"), ("POST", "/api/workspace"), ("GET", "/api/workspace/abc")]:
        status, body = server.request(method, path)
        assert status == 410 and body["code"] == "SDK_VERSION_UNSUPPORTED", body
        assert "0.143 and later" in body["message"], body
