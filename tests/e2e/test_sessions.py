"""Shell sessions (`/process/session`) through the real Daytona SDK against `corral serve`."""

import asyncio
import secrets
import time

import pytest
from daytona import AsyncDaytona, DaytonaConfig, DaytonaError, DaytonaNotFoundError, SessionExecuteRequest

from conftest import host_processes_with


@pytest.fixture(scope="module")
def sb(daytona):
    sandbox = daytona.create()
    yield sandbox
    daytona.delete(sandbox)


def new_session(sb):
    sid = "s-" + secrets.token_hex(4)
    sb.process.create_session(sid)
    return sid


def run(sb, sid, command, **kw):
    return sb.process.execute_session_command(sid, SessionExecuteRequest(command=command, **kw))


def wait_exit(sb, sid, cmd_id, limit=10):
    deadline = time.time() + limit
    while time.time() < deadline:
        cmd = sb.process.get_session_command(sid, cmd_id)
        if cmd.exit_code is not None:
            return cmd
        time.sleep(0.05)
    raise AssertionError(f"command {cmd_id} did not finish in {limit}s")


def test_create_get_list_delete(sb):
    sid = new_session(sb)
    session = sb.process.get_session(sid)
    assert session.session_id == sid and session.commands == []
    r = run(sb, sid, "echo hi")
    session = sb.process.get_session(sid)
    assert [(c.id, c.command, c.exit_code) for c in session.commands] == [(r.cmd_id, "echo hi", 0)]
    assert sid in [s.session_id for s in sb.process.list_sessions()]
    sb.process.delete_session(sid)
    assert sid not in [s.session_id for s in sb.process.list_sessions()]
    with pytest.raises(DaytonaNotFoundError):
        sb.process.get_session(sid)


def test_cd_and_export_persist_and_it_runs_as_the_user(sb):
    sid = new_session(sb)
    assert run(sb, sid, "pwd").stdout.strip() == sb.process.exec("pwd").result.strip()
    run(sb, sid, "mkdir -p /tmp/sess-dir && cd /tmp/sess-dir")
    run(sb, sid, "export GREETING='hello there'")
    r = run(sb, sid, 'echo "$PWD:$GREETING"; whoami')
    assert r.stdout == "/tmp/sess-dir:hello there\ndaytona\n"
    assert r.exit_code == 0
    sb.process.delete_session(sid)


def test_stdout_stderr_and_exit_codes_are_separate(sb):
    sid = new_session(sb)
    r = run(sb, sid, "echo out1; echo err1 >&2; echo out2; (exit 7)")
    assert r.exit_code == 7
    assert r.stdout == "out1\nout2\n"
    assert r.stderr == "err1\n"
    assert sorted(r.output.splitlines()) == ["err1", "out1", "out2"]
    r = run(sb, sid, "false")
    assert r.exit_code == 1 and r.stdout == "" and r.stderr == ""
    # A syntax error is the command's failure, not the session's.
    r = run(sb, sid, "if then fi (")
    assert r.exit_code != 0 and "syntax error" in r.stderr
    assert run(sb, sid, "echo 'still' \"here\"").stdout == "still here\n"
    sb.process.delete_session(sid)


def test_run_async_polling_and_logs(sb):
    sid = new_session(sb)
    r = run(sb, sid, "echo start; sleep 1; echo oops >&2; sleep 0.2; echo end; (exit 4)", run_async=True)
    assert r.cmd_id and r.exit_code is None
    assert sb.process.get_session_command(sid, r.cmd_id).exit_code is None
    cmd = wait_exit(sb, sid, r.cmd_id)
    assert cmd.exit_code == 4 and cmd.id == r.cmd_id
    logs = sb.process.get_session_command_logs(sid, r.cmd_id)
    assert logs.stdout == "start\nend\n"
    assert logs.stderr == "oops\n"
    assert logs.output == "start\noops\nend\n"
    sb.process.delete_session(sid)


def test_follow_logs_stream_while_the_command_runs(sb, server):
    sid = new_session(sb)

    async def main():
        config = DaytonaConfig(api_key=server.key, api_url=f"{server.url}/api")
        async with AsyncDaytona(config) as d:
            asb = await d.get(sb.id)
            r = await asb.process.execute_session_command(
                sid, SessionExecuteRequest(command="echo first; sleep 2; echo second >&2; echo third", run_async=True)
            )
            started = time.monotonic()
            events = []
            await asb.process.get_session_command_logs_async(
                sid,
                r.cmd_id,
                lambda s: events.append(("out", s, time.monotonic() - started)),
                lambda s: events.append(("err", s, time.monotonic() - started)),
            )
            ended = time.monotonic() - started
            return events, ended

    events, ended = asyncio.run(main())
    out = "".join(s for kind, s, _ in events if kind == "out")
    err = "".join(s for kind, s, _ in events if kind == "err")
    assert out == "first\nthird\n"
    assert err == "second\n"
    assert ended >= 1.5
    first = next(t for kind, s, t in events if "first" in s)
    assert first < 1.0, f"the first line arrived after {first:.2f}s, not while the command ran"
    # Following a finished command replays its log and ends.
    cmd = sb.process.get_session(sid).commands[0]
    assert cmd.exit_code == 0
    sb.process.delete_session(sid)


def test_follow_a_finished_command_replays_it(sb, server):
    sid = new_session(sb)
    r = run(sb, sid, "echo a; echo b >&2")

    async def main():
        config = DaytonaConfig(api_key=server.key, api_url=f"{server.url}/api")
        async with AsyncDaytona(config) as d:
            asb = await d.get(sb.id)
            out, err = [], []
            await asb.process.get_session_command_logs_async(sid, r.cmd_id, out.append, err.append)
            entry_out = []
            await asb.process.get_entrypoint_logs_async(entry_out.append, entry_out.append)
            return "".join(out), "".join(err), entry_out

    out, err, entry_out = asyncio.run(main())
    assert (out, err) == ("a\n", "b\n")
    assert entry_out == []
    # The sync client's follow (httpx WebSocket) demultiplexes the same frames.
    sync_out, sync_err = [], []
    asyncio.run(sb.process.get_session_command_logs_async(sid, r.cmd_id, sync_out.append, sync_err.append))
    assert ("".join(sync_out), "".join(sync_err)) == ("a\n", "b\n")
    sb.process.delete_session(sid)


def test_input_reaches_a_running_command(sb):
    sid = new_session(sb)
    r = run(sb, sid, "read x; echo got $x", run_async=True)
    time.sleep(0.3)
    assert sb.process.get_session_command(sid, r.cmd_id).exit_code is None
    sb.process.send_session_command_input(sid, r.cmd_id, "hello\n")
    assert wait_exit(sb, sid, r.cmd_id).exit_code == 0
    # Like Daytona, the input is echoed into the command's stdout log by default.
    assert sb.process.get_session_command_logs(sid, r.cmd_id).stdout == "hello\ngot hello\n"
    # Input to a finished command is refused.
    with pytest.raises(DaytonaError):
        sb.process.send_session_command_input(sid, r.cmd_id, "late\n")
    sb.process.delete_session(sid)


def test_input_gets_a_newline_and_feeds_a_reader_line_by_line(sb):
    sid = new_session(sb)
    r = run(sb, sid, "head -n 2 | tr a-z A-Z", run_async=True, suppress_input_echo=True)
    # Without a trailing newline, one is added (so `read`-style readers see a line).
    sb.process.send_session_command_input(sid, r.cmd_id, "one")
    time.sleep(0.2)
    assert sb.process.get_session_command(sid, r.cmd_id).exit_code is None
    sb.process.send_session_command_input(sid, r.cmd_id, "two\n")
    assert wait_exit(sb, sid, r.cmd_id).exit_code == 0
    logs = sb.process.get_session_command_logs(sid, r.cmd_id)
    # suppressInputEcho: only the command's own output.
    assert (logs.stdout, logs.stderr) == ("ONE\nTWO\n", "")
    sb.process.delete_session(sid)


def test_suppressed_echo_keeps_secrets_out_of_the_log(sb):
    sid = new_session(sb)
    r = run(sb, sid, "read -r pw; echo ${#pw} chars", run_async=True, suppress_input_echo=True)
    sb.process.send_session_command_input(sid, r.cmd_id, "s3cret")
    assert wait_exit(sb, sid, r.cmd_id).exit_code == 0
    logs = sb.process.get_session_command_logs(sid, r.cmd_id)
    assert logs.stdout == "6 chars\n"
    assert "s3cret" not in logs.output
    # The echoed form, for comparison, and its place in the combined output.
    r = run(sb, sid, "read -r pw; echo ${#pw} chars >&2", run_async=True)
    sb.process.send_session_command_input(sid, r.cmd_id, "abc")
    assert wait_exit(sb, sid, r.cmd_id).exit_code == 0
    logs = sb.process.get_session_command_logs(sid, r.cmd_id)
    assert (logs.stdout, logs.stderr, logs.output) == ("abc\n", "3 chars\n", "abc\n3 chars\n")
    sb.process.delete_session(sid)


def test_delete_kills_what_the_session_started(sb):
    sid = new_session(sb)
    marker = "7" + str(secrets.randbelow(10**6)).zfill(6)
    # Background jobs (one in a session of its own) and a running foreground command.
    bg = run(sb, sid, f"sleep 4{marker}.5 & setsid sleep 5{marker}.5 & echo started")
    assert bg.exit_code == 0 and bg.stdout == "started\n"
    r = run(sb, sid, f"sleep 3{marker}.5", run_async=True)
    names = [f"sleep {n}{marker}.5" for n in (3, 4, 5)]
    deadline = time.time() + 5
    while not all(host_processes_with(n) for n in names) and time.time() < deadline:
        time.sleep(0.05)
    assert all(host_processes_with(n) for n in names)
    sb.process.delete_session(sid)
    deadline = time.time() + 5
    while any(host_processes_with(n) for n in names) and time.time() < deadline:
        time.sleep(0.05)
    assert [host_processes_with(n) for n in names] == [[], [], []]
    with pytest.raises(DaytonaNotFoundError):
        sb.process.get_session_command(sid, r.cmd_id)


def test_exit_in_a_command_ends_it_with_its_code(sb):
    sid = new_session(sb)
    r = run(sb, sid, "echo bye; exit 5")
    assert r.exit_code == 5 and r.stdout == "bye\n"
    # The shell is gone with it: further commands are refused with a 400, not hung.
    with pytest.raises(DaytonaError, match="exited"):
        run(sb, sid, "echo again")
    assert sb.process.get_session(sid).commands[0].exit_code == 5
    sb.process.delete_session(sid)


def test_unknown_ids_and_bad_bodies(sb, server):
    sid = new_session(sb)
    with pytest.raises(DaytonaNotFoundError):
        sb.process.get_session("no-such-session")
    with pytest.raises(DaytonaNotFoundError):
        sb.process.delete_session("no-such-session")
    with pytest.raises(DaytonaNotFoundError):
        run(sb, "no-such-session", "true")
    with pytest.raises(DaytonaNotFoundError):
        sb.process.get_session_command(sid, "no-such-command")
    with pytest.raises(DaytonaNotFoundError):
        sb.process.get_session_command_logs(sid, "no-such-command")
    with pytest.raises(DaytonaNotFoundError):
        sb.process.send_session_command_input(sid, "no-such-command", "x")
    base = f"/toolbox/{sb.id}/process/session"
    for path, body in [(base, {"nope": 1}), (base, "not json"), (f"{base}/{sid}/exec", {"cmd": "x"}),
                       (f"{base}/{sid}/exec", {"command": ""})]:
        status, resp = server.request("POST", path, body)
        assert status == 400, (path, body, status, resp)
        assert resp["code"] == "BAD_REQUEST"
    status, resp = server.request("POST", base, {"sessionId": sid})
    assert status == 409
    entry = sb.process.get_entrypoint_session()
    assert entry.commands == []
    logs = sb.process.get_entrypoint_logs()
    assert (logs.output, logs.stdout, logs.stderr) == ("", "", "")
    sb.process.delete_session(sid)
