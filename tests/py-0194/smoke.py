"""The Python SDK 0.194 (pinned by daytona-adk) against a real `corral serve`: what
daytona-adk's plugin and tools call, plus the error wording integrations match on. Run by
tests/e2e/test_older_sdks.py in its own venv (.venv-0194) with CORRAL_API_URL and
CORRAL_API_KEY set; prints one `ok <step>` line per step and exits non-zero on the first
failure."""

import os
import sys
import time

from daytona import (
    CodeRunParams,
    CreateSandboxFromSnapshotParams,
    Daytona,
    DaytonaConfig,
    DaytonaError,
    ListSandboxesQuery,
    PtySize,
    SessionExecuteRequest,
)
from importlib.metadata import version as dist_version


def ok(step):
    print(f"ok {step}", flush=True)


def main():
    assert dist_version("daytona").startswith("0.194."), dist_version("daytona")
    d = Daytona(DaytonaConfig(api_key=os.environ["CORRAL_API_KEY"], api_url=os.environ["CORRAL_API_URL"]))
    mark = os.environ.get("CORRAL_SMOKE_LABEL", "sdk0194")
    # daytona-adk's DaytonaPlugin: create with a language, env vars and labels.
    sb = d.create(CreateSandboxFromSnapshotParams(language="python", env_vars={"ADK": "yes"},
                                                  labels={"smoke": mark}), timeout=60)
    try:
        assert sb.state == "started", sb.state
        ok("create")
        # ExecuteCodeTool: code_run, or upload + exec + delete for other languages.
        r = sb.process.code_run("import os\nprint('hi', os.environ.get('ADK'))",
                                CodeRunParams(env={"X": "1"}), 30)
        assert r.exit_code == 0 and "hi yes" in r.result, (r.exit_code, r.result)
        ok("code_run")
        sb.fs.upload_file(b"console.log(6*7)\n", "/tmp/adk_script.js")
        r = sb.process.exec("cat /tmp/adk_script.js; echo $FOO", env={"FOO": "bar"}, timeout=30)
        assert r.exit_code == 0 and "console.log(6*7)" in r.result and "bar" in r.result, r.result
        sb.fs.delete_file("/tmp/adk_script.js")
        ok("upload_exec_delete")
        # ExecuteCommandTool with a cwd.
        r = sb.process.exec("pwd", "/tmp", None, 30)
        assert r.exit_code == 0 and r.result.strip() == "/tmp", r.result
        ok("exec_cwd")
        # UploadFileTool / ReadFileTool.
        sb.fs.upload_file("héllo\n".encode(), "notes/a.txt")
        assert sb.fs.download_file("notes/a.txt") == "héllo\n".encode()
        ok("files_up_down")
        # StartLongRunningCommandTool: a session and an async command.
        sb.process.create_session("adk")
        cmd = sb.process.execute_session_command("adk", SessionExecuteRequest(command="echo started", run_async=False))
        assert cmd.exit_code == 0 and "started" in (cmd.output or cmd.stdout or ""), cmd
        sb.process.delete_session("adk")
        ok("session")
        # This SDK creates a terminal with POST /process/pty, then connects by WebSocket.
        pty = sb.process.create_pty_session(id="adk-pty", pty_size=PtySize(rows=30, cols=100))
        pty.wait_for_connection(timeout=10)
        assert sb.process.get_pty_session_info("adk-pty").cols == 100
        pty.send_input("echo pty-$((6*7))\n")
        pty.send_input("exit 3\n")
        seen = []
        result = pty.wait(on_data=lambda d: seen.append(bytes(d)), timeout=20)
        assert result.exit_code == 3, result
        assert b"pty-42" in b"".join(seen), seen
        pty.disconnect()
        ok("pty")
        assert sb.get_user_home_dir() and sb.get_work_dir()
        ok("dirs")
        # Daytona's wording, which integrations match on.
        try:
            sb.process.exec("sleep 5", timeout=1)
            raise AssertionError("no timeout")
        except DaytonaError as e:
            assert "timed out" in str(e), str(e)
        ok("exec_timeout_wording")
        try:
            sb.fs.download_file("/tmp/definitely-missing.txt")
            raise AssertionError("downloaded a missing file")
        except DaytonaError as e:
            assert "file not found" in str(e), str(e)
        ok("missing_file_wording")
        found = [s.id for s in d.list(ListSandboxesQuery(labels={"smoke": mark}))]
        assert found == [sb.id], found
        assert d.get(sb.id).id == sb.id
        ok("list_get")
    finally:
        d.delete(sb, timeout=60)
    # This SDK's delete does not wait (as Daytona's): the sandbox is gone soon after.
    deadline = time.monotonic() + 30
    while True:
        try:
            left = d.get(sb.id)
        except DaytonaError as e:
            assert "not found" in str(e).lower(), str(e)
            break
        assert left.state in ("destroying", "destroyed"), left.state
        assert time.monotonic() < deadline, "still there 30 s after delete"
        time.sleep(0.1)
    ok("delete")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - the report is the point
        print(f"FAILED: {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
