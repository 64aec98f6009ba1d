"""Language servers through the SDK's LspServer: pylsp for python, typescript-language-server
for typescript, each running inside the sandbox as its user."""

import os

import pytest
from daytona import CreateSandboxFromSnapshotParams, DaytonaError, DaytonaNotFoundError
from daytona.common.lsp_server import LspCompletionPosition

PY_SOURCE = """class Greeter:
    def hello(self):
        return "hi"


def main():
    g = Greeter()
    g.
"""

TS_SOURCE = """class Greeter {
  hello(): string {
    return "hi";
  }
}

function main() {
  const g = new Greeter();
  g.
}
"""


def require_server(sandbox, binary):
    """Skips (or fails under CORRAL_E2E_STRICT) when the language server is not installed."""
    if sandbox.process.exec(f"command -v {binary}").exit_code != 0:
        if os.environ.get("CORRAL_E2E_STRICT"):
            raise AssertionError(f"{binary} is not installed on this host")
        pytest.skip(f"{binary} is not installed on this host")


def names(symbols):
    return {s.name for s in symbols}


def exercise(sandbox, language, project, file_name, source, position):
    sandbox.process.exec(f"mkdir -p {project}")
    path = f"{project}/{file_name}"
    sandbox.fs.upload_file(source.encode(), path)
    lsp = sandbox.create_lsp_server(language, project)
    lsp.start()
    try:
        # The server runs as the sandbox's user, in the project.
        ps = sandbox.process.exec("ps -eo user:20,args | grep -E 'pylsp|typescript-language' | grep -v grep")
        assert ps.result.strip(), ps.result
        assert all(line.split()[0] == "daytona" for line in ps.result.strip().splitlines()), ps.result

        lsp.did_open(path)
        completions = lsp.completions(path, LspCompletionPosition(line=position[0], character=position[1]))
        # pylsp labels methods with their parameters (`hello()`) and inserts the bare name.
        matches = [i for i in completions.items if "hello" in (i.label, i.insert_text)]
        assert matches, completions.items[:2]
        assert isinstance(completions.is_incomplete, bool)
        assert matches[0].kind in (2, 3)  # Method (typescript) or Function (pylsp says so)
        assert "Greeter" not in [i.label for i in completions.items]  # Members only after `g.`

        symbols = lsp.document_symbols(path)
        assert {"Greeter", "main"} <= names(symbols), names(symbols)
        greeter = next(s for s in symbols if s.name == "Greeter")
        assert greeter.kind == 5  # Class
        assert greeter.location.uri == f"file://{path}"
        assert greeter.location.range.start.line == 0

        found = lsp.sandbox_symbols("Gree")
        assert "Greeter" in names(found), names(found)
        assert "main" not in names(found)

        # Changes on disk are picked up by opening again.
        sandbox.fs.upload_file((source + "\n\ndef extra_fn():\n    pass\n" if language == "python"
                                else source + "\nfunction extraFn() {}\n").encode(), path)
        lsp.did_open(path)
        extra = "extra_fn" if language == "python" else "extraFn"
        assert extra in names(lsp.document_symbols(path))

        lsp.did_close(path)
    finally:
        lsp.stop()
    # Stopped means gone: the process and the server's registration.
    ps = sandbox.process.exec("sleep 0.5; ps -eo args | grep -E 'pylsp|typescript-language' | grep -v grep")
    assert ps.result.strip() == "", ps.result
    with pytest.raises(DaytonaNotFoundError, match="call start first"):
        lsp.document_symbols(path)


def test_python_language_server(sandbox):
    require_server(sandbox, "pylsp")
    exercise(sandbox, "python", "/home/daytona/pyproj", "main.py", PY_SOURCE, (7, 6))


def test_typescript_language_server(sandbox):
    require_server(sandbox, "typescript-language-server")
    exercise(sandbox, "typescript", "/home/daytona/tsproj", "index.ts", TS_SOURCE, (8, 4))


def test_relative_paths_resolve_against_the_project(sandbox):
    require_server(sandbox, "pylsp")
    project = "/home/daytona/relproj"
    sandbox.process.exec(f"mkdir -p {project}/pkg")
    sandbox.fs.upload_file(PY_SOURCE.encode(), f"{project}/pkg/m.py")
    lsp = sandbox.create_lsp_server("python", project)
    lsp.start()
    lsp.start()  # Starting twice is harmless.
    try:
        lsp.did_open("pkg/m.py")
        assert {"Greeter", "main"} <= names(lsp.document_symbols("pkg/m.py"))
    finally:
        lsp.stop()


def test_daytona_sdk_e2e_flow_with_work_dir_relative_paths(sandbox):
    # Daytona's own SDK e2e test (libs/sdk-python/tests/test_e2e.py): the project and the file
    # are given relative to the sandbox's work dir, so the file's uri is
    # `file://e2e-lsp-project/sample.py`; it resolves under the work dir first, as Daytona's
    # daemon does. pylsp has no `workspace/symbol`: the open documents are searched.
    require_server(sandbox, "pylsp")
    project = "e2e-lsp-project"
    path = f"{project}/sample.py"
    sandbox.fs.create_folder(project, "755")
    sandbox.fs.upload_file(
        b'class Greeter:\n    def greet(self) -> str:\n        return "hello"\n\ngreeter = Greeter()\ngreeter.\n',
        path,
    )
    lsp = sandbox.create_lsp_server("python", project)
    lsp.start()
    try:
        lsp.did_open(path)
        symbols = lsp.document_symbols(path)
        assert "Greeter" in names(symbols), names(symbols)
        greeter = next(s for s in symbols if s.name == "Greeter")
        work_dir = sandbox.get_work_dir()
        assert greeter.location.uri == f"file://{work_dir}/{path}", greeter.location.uri
        assert "Greeter" in names(lsp.sandbox_symbols("Greeter"))
        lsp.did_close(path)
    finally:
        lsp.stop()


def test_bad_requests_get_clear_errors(server, sandbox):
    lsp = sandbox.create_lsp_server("cobol", "/home/daytona")
    with pytest.raises(DaytonaError, match="unsupported language id") as e:
        lsp.start()
    assert e.value.status_code == 400

    never = sandbox.create_lsp_server("python", "/home/daytona")
    with pytest.raises(DaytonaNotFoundError, match="no python language server is running"):
        never.did_open("/home/daytona/x.py")
    with pytest.raises(DaytonaNotFoundError, match="call start first"):
        never.sandbox_symbols("x")
    with pytest.raises(DaytonaNotFoundError):
        never.stop()

    missing = sandbox.create_lsp_server("python", "/home/daytona/no-such-project")
    with pytest.raises(DaytonaError, match="does not exist") as e:
        missing.start()
    assert e.value.status_code == 400

    # Raw bad bodies and queries are 400s in the daemon's error shape.
    status, body = server.request("POST", f"/toolbox/{sandbox.id}/lsp/start", {"languageId": "python"})
    assert status == 400 and body["statusCode"] == 400, body
    status, body = server.request("GET", f"/toolbox/{sandbox.id}/lsp/document-symbols?languageId=python")
    assert status == 400 and "pathToProject is required" in body["message"], body


def test_opening_a_missing_file_is_a_clear_error(sandbox):
    require_server(sandbox, "pylsp")
    lsp = sandbox.create_lsp_server("python", "/home/daytona")
    lsp.start()
    try:
        with pytest.raises(DaytonaNotFoundError, match="nope.py"):
            lsp.did_open("/home/daytona/nope.py")
    finally:
        lsp.stop()


def test_a_language_server_missing_from_path_is_a_clear_error(daytona):
    sb = daytona.create(CreateSandboxFromSnapshotParams(env_vars={"PATH": "/nonexistent"}))
    try:
        lsp = sb.create_lsp_server("python", "/home/daytona")
        with pytest.raises(DaytonaError, match="pylsp is not installed in this sandbox") as e:
            lsp.start()
        assert e.value.status_code == 400
    finally:
        daytona.delete(sb, wait=True)


def test_javascript_uses_the_typescript_server(sandbox):
    require_server(sandbox, "typescript-language-server")
    project = "/home/daytona/jsproj"
    sandbox.process.exec(f"mkdir -p {project}")
    source = "class Greeter {\n  hello() {\n    return 'hi';\n  }\n}\nconst g = new Greeter();\ng.\n"
    sandbox.fs.upload_file(source.encode(), f"{project}/app.js")
    lsp = sandbox.create_lsp_server("javascript", project)
    lsp.start()
    try:
        lsp.did_open(f"{project}/app.js")
        items = lsp.completions(f"{project}/app.js", LspCompletionPosition(line=6, character=2)).items
        assert "hello" in [i.label for i in items], [i.label for i in items]
        assert {"Greeter", "g"} <= names(lsp.document_symbols(f"{project}/app.js"))
    finally:
        lsp.stop()


def test_a_crashed_server_is_reported_and_can_be_started_again(sandbox):
    require_server(sandbox, "pylsp")
    project = "/home/daytona/crashproj"
    sandbox.process.exec(f"mkdir -p {project}")
    sandbox.fs.upload_file(PY_SOURCE.encode(), f"{project}/m.py")
    lsp = sandbox.create_lsp_server("python", project)
    lsp.start()
    pid = sandbox.process.exec("ps -eo pid,args | grep '[p]ylsp' | awk '{print $1}'").result.split()
    assert len(pid) == 1, pid
    sandbox.process.exec(f"kill -9 {pid[0]}; sleep 0.3")
    with pytest.raises(DaytonaError, match="not running any more") as e:
        lsp.document_symbols(f"{project}/m.py")
    assert e.value.status_code == 502
    lsp.start()
    try:
        assert "Greeter" in names(lsp.document_symbols(f"{project}/m.py"))
    finally:
        lsp.stop()


def test_async_client(server, sandbox):
    require_server(sandbox, "pylsp")
    import asyncio

    from daytona import AsyncDaytona, DaytonaConfig

    project = "/home/daytona/asyncproj"
    sandbox.process.exec(f"mkdir -p {project}")
    sandbox.fs.upload_file(PY_SOURCE.encode(), f"{project}/a.py")

    async def run():
        async with AsyncDaytona(DaytonaConfig(api_url=f"{server.url}/api", api_key=server.key)) as client:
            sb = await client.get(sandbox.id)
            lsp = sb.create_lsp_server("python", project)
            await lsp.start()
            try:
                await lsp.did_open(f"{project}/a.py")
                items = (await lsp.completions(f"{project}/a.py", LspCompletionPosition(line=7, character=6))).items
                symbols = await lsp.document_symbols(f"{project}/a.py")
                await lsp.did_close(f"{project}/a.py")
            finally:
                await lsp.stop()
            return items, symbols

    items, symbols = asyncio.run(run())
    assert any("hello" in (i.label, i.insert_text) for i in items)
    assert {"Greeter", "hello", "main"} <= names(symbols)


def test_concurrent_starts_leave_one_server(sandbox):
    require_server(sandbox, "pylsp")
    from concurrent.futures import ThreadPoolExecutor

    project = "/home/daytona/raceproj"
    sandbox.process.exec(f"mkdir -p {project}")
    lsp = sandbox.create_lsp_server("python", project)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: lsp.start(), range(4)))
    try:
        sandbox.process.exec("sleep 0.3")
        count = sandbox.process.exec("ps -eo args | grep -c '[p]ylsp'").result.strip()
        assert count == "1", count
    finally:
        lsp.stop()
    with pytest.raises(DaytonaNotFoundError):
        lsp.stop()
