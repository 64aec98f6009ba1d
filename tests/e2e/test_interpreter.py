"""The stateful code interpreter (`sandbox.code_interpreter`), through the real SDK (sync and
async) against `corral serve`."""

import asyncio
import threading
import time

import pytest
from daytona import AsyncDaytona, DaytonaConfig, DaytonaError, DaytonaTimeoutError
from daytona_toolbox_api_client import InterpreterContext


def test_variables_persist_in_default_context(sandbox):
    ci = sandbox.code_interpreter
    r = ci.run_code("x = 40")
    assert r.error is None and r.stdout == ""
    r = ci.run_code("print(x + 2)")
    assert r.error is None
    assert r.stdout == "42\n"
    # Functions and imports persist too.
    ci.run_code("import math\ndef area(r):\n    return math.pi * r * r")
    assert ci.run_code("print(round(area(2), 3))").stdout == "12.566\n"


def test_stdout_stderr_callbacks_stream_before_the_end(sandbox):
    chunks = []  # (kind, text, time received)
    start = time.monotonic()
    r = sandbox.code_interpreter.run_code(
        "import sys, time\n"
        "print('first')\n"
        "sys.stderr.write('warn\\n')\n"
        "time.sleep(1.5)\n"
        "print('second')\n",
        on_stdout=lambda m: chunks.append(("out", m.output, time.monotonic() - start)),
        on_stderr=lambda m: chunks.append(("err", m.output, time.monotonic() - start)),
    )
    end = time.monotonic() - start
    assert r.error is None
    assert r.stdout == "first\nsecond\n"
    assert r.stderr == "warn\n"
    assert "".join(t for k, t, _ in chunks if k == "out") == "first\nsecond\n"
    assert "".join(t for k, t, _ in chunks if k == "err") == "warn\n"
    first_at = next(at for k, t, at in chunks if "first" in t)
    assert end >= 1.5
    assert first_at < end - 1.0, (first_at, end)


def test_stdout_callback_gets_one_line_per_call_as_daytona(sandbox):
    # Daytona's worker holds a write until it has a newline (or 1 KiB): `print` gives one
    # callback per line, not one for the text and one for the "\n".
    out, err = [], []
    r = sandbox.code_interpreter.run_code(
        "import sys\n"
        "for i in range(3): print(i)\n"
        "print('a', end='')\n"
        "print('b')\n"
        "sys.stderr.write('e1\\n')\n"
        "print('tail', end='')\n",
        on_stdout=lambda m: out.append(m.output),
        on_stderr=lambda m: err.append(m.output),
    )
    assert r.error is None
    assert out == ["0\n", "1\n", "2\n", "ab\n", "tail"], out
    assert err == ["e1\n"], err
    # Text held without a newline is sent before an error is reported.
    errors = []
    r = sandbox.code_interpreter.run_code(
        "print('partial', end='')\nraise ValueError('v')", on_error=errors.append
    )
    assert r.stdout == "partial" and errors and errors[0].name == "ValueError"


def test_output_of_subprocesses_reaches_the_run(sandbox):
    r = sandbox.code_interpreter.run_code("import os\nos.system('echo from-shell; echo shell-err >&2')")
    assert r.error is None
    assert "from-shell\n" in r.stdout
    assert "shell-err\n" in r.stderr


def test_exception_gives_name_value_traceback(sandbox):
    errors = []
    r = sandbox.code_interpreter.run_code(
        "def f():\n    return 1 / 0\nprint('before')\nf()\n", on_error=errors.append
    )
    assert r.stdout == "before\n"
    assert r.error is not None
    assert r.error.name == "ZeroDivisionError"
    assert r.error.value == "division by zero"
    assert "ZeroDivisionError: division by zero" in r.error.traceback
    assert "return 1 / 0" in r.error.traceback
    assert "corral" not in r.error.traceback  # the REPL server's own frames are hidden
    assert len(errors) == 1 and errors[0].name == "ZeroDivisionError"
    # Syntax errors too; the context survives both.
    r = sandbox.code_interpreter.run_code("def (:")
    assert r.error is not None and r.error.name == "SyntaxError"
    assert sandbox.code_interpreter.run_code("print('alive')").stdout == "alive\n"


def test_contexts_are_isolated_with_their_cwd_listed_and_deleted(sandbox):
    ci = sandbox.code_interpreter
    ci.run_code("shared = 'default'")
    sandbox.fs.create_folder("/tmp/ctxdir", "755")
    ctx = ci.create_context(cwd="/tmp/ctxdir")
    assert ctx.cwd == "/tmp/ctxdir" and ctx.language == "python" and ctx.active
    other = ci.create_context()
    assert other.cwd == sandbox.get_work_dir()

    r = ci.run_code("print(shared)", context=ctx)
    assert r.error is not None and r.error.name == "NameError"
    r = ci.run_code("import os\nprint(os.getcwd())\nprint(os.getuid())", context=ctx)
    assert r.stdout.splitlines()[0] == "/tmp/ctxdir"
    assert r.stdout.splitlines()[1] != "0"  # the sandbox user, not root
    ci.run_code("mine = 1", context=ctx)
    assert ci.run_code("print('mine' in globals())", context=other).stdout == "False\n"
    assert ci.run_code("print('mine' in globals())").stdout == "False\n"
    assert ci.run_code("print(mine)", context=ctx).stdout == "1\n"

    ids = [c.id for c in ci.list_contexts()]
    assert ctx.id in ids and other.id in ids and "default" not in ids

    ci.delete_context(ctx)
    assert ctx.id not in [c.id for c in ci.list_contexts()]
    with pytest.raises(DaytonaError, match="not found"):
        ci.run_code("print(1)", context=ctx)
    with pytest.raises(DaytonaError, match="not found"):
        ci.delete_context(ctx)
    ci.delete_context(other)


def test_unknown_context_and_bad_cwd(sandbox):
    ci = sandbox.code_interpreter
    ghost = InterpreterContext(id="nope", cwd="/", language="python", active=True, created_at="")
    with pytest.raises(DaytonaError, match="not found"):
        ci.run_code("print(1)", context=ghost)
    with pytest.raises(DaytonaError, match="does not exist"):
        ci.create_context(cwd="/no/such/dir")


def test_timeout_raises_and_context_keeps_its_state(sandbox):
    ci = sandbox.code_interpreter
    ci.run_code("kept = 7")
    start = time.monotonic()
    with pytest.raises(DaytonaTimeoutError):
        ci.run_code("while True: pass", timeout=1)
    assert time.monotonic() - start < 5
    # SIGINT stopped the loop: same process, variables kept.
    r = ci.run_code("print(kept)")
    assert r.error is None and r.stdout == "7\n"


def test_timeout_of_a_run_ignoring_sigint_restarts_the_context(sandbox):
    ci = sandbox.code_interpreter
    ctx = ci.create_context()
    ci.run_code("kept = 7", context=ctx)
    with pytest.raises(DaytonaTimeoutError):
        ci.run_code(
            "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: time.sleep(0.1)",
            context=ctx,
            timeout=1,
        )
    # The process was killed: the context works again, with a fresh namespace.
    r = ci.run_code("print('kept' in globals())", context=ctx)
    assert r.error is None and r.stdout == "False\n"
    ci.delete_context(ctx)


def test_envs_are_visible_for_that_run_only(sandbox):
    ci = sandbox.code_interpreter
    r = ci.run_code("import os\nprint(os.environ['GREETING'])", envs={"GREETING": "hello"})
    assert r.error is None and r.stdout == "hello\n"
    r = ci.run_code("import os\nprint(os.environ.get('GREETING'))")
    assert r.stdout == "None\n"


def test_async_client(server, sandbox):
    async def main():
        async with AsyncDaytona(DaytonaConfig(api_url=f"{server.url}/api", api_key=server.key)) as client:
            sb = await client.get(sandbox.id)
            ci = sb.code_interpreter
            await ci.run_code("y = 20")
            seen = []
            r = await ci.run_code("print(y * 2)", on_stdout=lambda m: seen.append(m.output))
            assert r.stdout == "40\n" and "".join(seen) == "40\n"
            ctx = await ci.create_context()
            r = await ci.run_code("print(y)", context=ctx)
            assert r.error is not None and r.error.name == "NameError"
            assert ctx.id in [c.id for c in await ci.list_contexts()]
            with pytest.raises(DaytonaTimeoutError):
                await ci.run_code("while True: pass", timeout=1)
            assert (await ci.run_code("print(y)")).stdout == "20\n"
            await ci.delete_context(ctx)
            assert ctx.id not in [c.id for c in await ci.list_contexts()]

    asyncio.run(main())


def test_bad_requests_are_rejected(server, sandbox):
    ci = sandbox.code_interpreter
    with pytest.raises(DaytonaError, match="timeout must not be negative"):
        ci.run_code("print(1)", timeout=-1)
    with pytest.raises(DaytonaError, match="invalid environment variable name"):
        ci.run_code("print(1)", envs={"A=B": "x"})
    base = f"/toolbox/{sandbox.id}/process/interpreter"
    status, body = server.request("POST", f"{base}/context", {"language": "cobol"})
    assert status == 400 and "unsupported language" in body["message"]
    status, body = server.request("POST", f"{base}/context", "{not json")
    assert status == 400
    status, body = server.request("DELETE", f"{base}/context/default")
    assert status == 400 and "default context" in body["message"]
    # Not a WebSocket upgrade: a 4xx, not a hang or a 500.
    status, _ = server.request("GET", f"{base}/execute")
    assert 400 <= status < 500
    # The interpreter still works after all that.
    assert ci.run_code("print('ok')").stdout == "ok\n"


def test_concurrent_runs_in_one_context_queue(sandbox):
    ci = sandbox.code_interpreter
    ctx = ci.create_context()
    ci.run_code("log = []", context=ctx)
    results = {}

    def slow():
        results["slow"] = ci.run_code(
            "import time\nlog.append('slow-start')\ntime.sleep(1)\nlog.append('slow-end')", context=ctx
        )

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    r = ci.run_code("log.append('fast')\nprint(log)", context=ctx)
    t.join()
    assert results["slow"].error is None
    # The second run waited for the first to finish instead of interleaving with it.
    assert r.stdout == "['slow-start', 'slow-end', 'fast']\n"
    ci.delete_context(ctx)


def test_deleting_a_context_stops_its_run(sandbox):
    ci = sandbox.code_interpreter
    ctx = ci.create_context()
    results = {}

    def forever():
        results["r"] = ci.run_code("import time\nwhile True: time.sleep(0.1)", context=ctx, timeout=30)

    t = threading.Thread(target=forever)
    t.start()
    time.sleep(0.5)
    start = time.monotonic()
    ci.delete_context(ctx)
    t.join(timeout=10)
    assert not t.is_alive()
    assert time.monotonic() - start < 5
    assert results["r"].error is not None and results["r"].error.name == "InterpreterExited"


def test_large_and_flooding_output(sandbox):
    ci = sandbox.code_interpreter
    r = ci.run_code("print('x' * 6_000_000)\nprint('\\u00e9\\ud800')")
    assert r.error is None
    assert r.stdout == "x" * 6_000_000 + "\n" + "\u00e9?\n"
    start = time.monotonic()
    with pytest.raises(DaytonaTimeoutError):
        ci.run_code("while True: print('spam')", timeout=1)
    assert time.monotonic() - start < 6
    assert ci.run_code("print('after')").stdout == "after\n"


def test_a_dead_interpreter_is_reported_and_restarted(sandbox):
    ci = sandbox.code_interpreter
    ctx = ci.create_context()
    ci.run_code("kept = 1", context=ctx)
    r = ci.run_code("import os\nos._exit(3)", context=ctx)
    assert r.error is not None and r.error.name == "InterpreterExited"
    r = ci.run_code("print('kept' in globals())", context=ctx)
    assert r.error is None and r.stdout == "False\n"
    ci.delete_context(ctx)


def test_a_client_that_goes_away_interrupts_its_run(server, sandbox):
    async def main():
        async with AsyncDaytona(DaytonaConfig(api_url=f"{server.url}/api", api_key=server.key)) as client:
            ci = (await client.get(sandbox.id)).code_interpreter
            await ci.run_code("state = 'kept'")
            task = asyncio.create_task(ci.run_code("import time\ntime.sleep(30)", timeout=60))
            await asyncio.sleep(0.7)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            start = time.monotonic()
            # Runs queue per context: this one only starts once the abandoned run was interrupted.
            r = await ci.run_code("print(state)")
            assert r.stdout == "kept\n"
            assert time.monotonic() - start < 5

    asyncio.run(main())
