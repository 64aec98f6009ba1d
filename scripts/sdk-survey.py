#!/usr/bin/env python3
"""Calls every public method of the official Python SDK (daytona, the version in the venv)
against a real `corral serve` and prints a Markdown table: works, refused (a DaytonaError
whose message says what is not supported), or fails (anything else: a bug to fix).

Run as root (it starts a server like the e2e suite does):
    CORRAL_BIN=target/release/corral .venv/bin/python scripts/sdk-survey.py
"""

import io
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests/e2e"))

from conftest import Server  # noqa: E402
from daytona import (  # noqa: E402
    CodeRunParams, CreateSandboxFromSnapshotParams, DaytonaError,
    FileUpload, Resources, SessionExecuteRequest,
)

REFUSAL_WORDS = ("not supported", "is not", "refused", "only a", "unsupported", "not in error")


def survey():
    srv = Server()
    srv.start()
    rows = []
    try:
        d = srv.client()
        sb = d.create(CreateSandboxFromSnapshotParams(labels={"survey": "1"}))
        home = "/home/daytona"

        def add(name, fn):
            try:
                fn()
                rows.append((name, "works", ""))
            except DaytonaError as e:
                msg = str(e).splitlines()[0][:160]
                kind = "refused" if any(w in msg.lower() for w in REFUSAL_WORDS) else "fails"
                rows.append((name, kind, msg))
            except Exception as e:  # noqa: BLE001 - the survey reports everything
                # Methods the SDK does not wrap raise its generated client's exceptions,
                # whose text carries the server's answer.
                text = " ".join(str(e).split())
                kind = "refused" if "not supported" in text else "fails"
                rows.append((name, kind, f"{type(e).__name__}: {text[:160]}"))

        # Daytona
        add("Daytona.create", lambda: d.create(CreateSandboxFromSnapshotParams(ephemeral=True)).delete())
        add("Daytona.get", lambda: d.get(sb.id))
        add("Daytona.list", lambda: list(d.list()))
        add("Daytona.stop / start", lambda: (d.stop(sb), d.start(sb)))
        # Sandbox
        add("Sandbox.refresh_data", sb.refresh_data)
        add("Sandbox.get_user_home_dir", sb.get_user_home_dir)
        add("Sandbox.get_user_root_dir", sb.get_user_root_dir)
        add("Sandbox.get_work_dir", sb.get_work_dir)
        add("Sandbox.get_metrics_latest", sb.get_metrics_latest)
        add("Sandbox.get_metrics", lambda: sb.get_metrics())
        add("Sandbox.set_labels", lambda: sb.set_labels({"survey": "2"}))
        add("Sandbox.download_url / upload_url", lambda: (sb.download_url(f"{home}/x"), sb.upload_url(f"{home}/x")))
        add("Sandbox.rotate_signing_key", sb.rotate_signing_key)
        add("Sandbox.set_autostop_interval", lambda: sb.set_autostop_interval(30))
        add("Sandbox.set_auto_archive_interval", lambda: sb.set_auto_archive_interval(60))
        add("Sandbox.set_auto_delete_interval", lambda: sb.set_auto_delete_interval(-1))
        add("Sandbox.set_auto_pause_interval", lambda: sb.set_auto_pause_interval(0))
        add("Sandbox.set_ttl", lambda: sb.set_ttl(600))
        add("Sandbox.set_public", lambda: sb.set_public(False))
        add("Sandbox.update_network_settings", lambda: sb.update_network_settings(network_block_all=False))
        add("Sandbox.update_network_settings(domain_allow_list)",
            lambda: sb.update_network_settings(domain_allow_list="example.com"))
        add("Sandbox.update_env", lambda: sb.update_env({"SURVEY": "1"}))
        add("Sandbox.get_preview_link", lambda: sb.get_preview_link(8080))
        add("Sandbox.create_signed_preview_url / expire",
            lambda: sb.expire_signed_preview_url(8080, sb.create_signed_preview_url(8080).token))
        add("Sandbox.refresh_activity", sb.refresh_activity)
        add("Sandbox.pause / start (resume)", lambda: (sb.pause(), sb.start()))
        add("Sandbox.resize", lambda: sb.resize(Resources(cpu=2)))
        add("Sandbox.create_ssh_access / validate / revoke", lambda: (
            a := sb.create_ssh_access(5), d.validate_ssh_access(a.token) if hasattr(d, "validate_ssh_access")
            else sb.validate_ssh_access(a.token), sb.revoke_ssh_access(a.token)))
        add("Sandbox.fork", lambda: d.delete(sb.fork()))
        snap = f"survey-{int(time.time())}"
        add("Sandbox.create_snapshot", lambda: sb.create_snapshot(snap))
        add("Sandbox.recover (not in error: refused)", sb.recover)
        # process
        p = sb.process
        add("process.exec", lambda: p.exec("echo hi"))
        add("process.code_run", lambda: p.code_run("print(1)", params=CodeRunParams()))
        add("process sessions (create/exec/get/logs/input/list/delete)", lambda: (
            p.create_session("s1"),
            c := p.execute_session_command("s1", SessionExecuteRequest(command="echo x")),
            p.get_session("s1"), p.get_session_command("s1", c.cmd_id),
            p.get_session_command_logs("s1", c.cmd_id), p.list_sessions(), p.delete_session("s1")))
        add("process.get_entrypoint_session / logs", lambda: (p.get_entrypoint_session(), p.get_entrypoint_logs()))
        add("process PTY (create/list/info/resize/kill)", lambda: (
            h := p.create_pty_session("pty1"), p.list_pty_sessions(), p.get_pty_session_info("pty1"),
            p.resize_pty_session("pty1", __import__("daytona").PtySize(rows=30, cols=100)),
            p.kill_pty_session("pty1"), h.disconnect()))
        # fs
        f = sb.fs
        add("fs.create_folder / upload_file / download_file / get_file_info / list_files", lambda: (
            f.create_folder(f"{home}/d", "755"), f.upload_file(b"abc", f"{home}/d/a.txt"),
            f.download_file(f"{home}/d/a.txt"), f.get_file_info(f"{home}/d/a.txt"), f.list_files(f"{home}/d")))
        add("fs.upload_files / download_files", lambda: (
            f.upload_files([FileUpload(source=b"b", destination=f"{home}/d/b.txt")]),
            f.download_files([__import__("daytona").FileDownloadRequest(source=f"{home}/d/b.txt")])))
        add("fs.find_files / search_files / replace_in_files", lambda: (
            f.find_files(f"{home}/d", "abc"), f.search_files(f"{home}/d", "*.txt"),
            f.replace_in_files([f"{home}/d/a.txt"], "abc", "xyz")))
        add("fs.set_file_permissions / move_files / delete_file", lambda: (
            f.set_file_permissions(f"{home}/d/a.txt", mode="644"), f.move_files(f"{home}/d/a.txt", f"{home}/d/c.txt"),
            f.delete_file(f"{home}/d/c.txt")))
        add("fs.upload_file_stream / download_file_stream", lambda: (
            f.upload_file_stream(io.BytesIO(b"s" * 1000), f"{home}/d/s.bin"),
            b"".join(f.download_file_stream(f"{home}/d/s.bin"))))
        # git
        g = sb.git
        add("git.init/add/commit/status/branches/create_branch/checkout_branch/delete_branch", lambda: (
            g.init(f"{home}/repo") if hasattr(g, "init") else p.exec(f"git init {home}/repo"),
            f.upload_file(b"x", f"{home}/repo/x"), g.add(f"{home}/repo", ["x"]),
            g.commit(f"{home}/repo", "m", "a", "a@b.c"), g.status(f"{home}/repo"), g.branches(f"{home}/repo"),
            g.create_branch(f"{home}/repo", "b2"), g.checkout_branch(f"{home}/repo", "b2"),
            g.checkout_branch(f"{home}/repo", "master" if "master" in g.branches(f"{home}/repo").branches else "main"),
            g.delete_branch(f"{home}/repo", "b2")))
        add("git.remote_add / remotes / remote_get", lambda: (
            g.remote_add(f"{home}/repo", "origin", "https://example.invalid/r.git"), g.remotes(f"{home}/repo"),
            g.remote_get(f"{home}/repo", "origin")))
        add("git.set_config / get_config / configure_user", lambda: (
            g.set_config("core.x", "1", "local", f"{home}/repo"), g.get_config("core.x", "local", f"{home}/repo"),
            g.configure_user("n", "e@x.y")))
        add("git.reset / restore", lambda: (g.reset(f"{home}/repo"), g.restore(f"{home}/repo", ["x"])))
        # lsp
        add("lsp (start/did_open/document_symbols/workspace_symbols/completions/stop)", lambda: (
            ls := sb.create_lsp_server("python", home), ls.start(), f.upload_file(b"def f():\n    pass\n", f"{home}/m.py"),
            ls.did_open(f"{home}/m.py"), ls.document_symbols(f"{home}/m.py"), ls.sandbox_symbols("f"),
            ls.completions(f"{home}/m.py", __import__("daytona").LspCompletionPosition(line=1, character=0)),
            ls.did_close(f"{home}/m.py"), ls.stop()))
        # code interpreter
        ci = sb.code_interpreter
        add("code_interpreter (run_code, contexts)", lambda: (
            ci.run_code("print(1)"), c := ci.create_context(), ci.list_contexts(), ci.delete_context(c)))
        # computer use
        add("computer_use.start", sb.computer_use.start)
        add("computer_use.screenshot.take_full_screen", sb.computer_use.screenshot.take_full_screen)
        # catalog
        add("snapshot.list / get / delete", lambda: (list(d.snapshot.list()), d.snapshot.get(snap), d.snapshot.delete(d.snapshot.get(snap))))
        # snapshot.create from a registry image needs a registry: the e2e suite runs one
        # (tests/e2e/test_images_pull.py); this survey has no network.
        add("volume.create / get / list / delete", lambda: (
            v := d.volume.create(f"vol-{int(time.time())}"), d.volume.get(v.name), d.volume.list(), d.volume.delete(v)))
        add("warm_pool.list", lambda: d.warm_pool.list())
        add("secret.list", lambda: d.secret.list())
        add("Sandbox.update_secrets", lambda: sb.update_secrets({"K": "name"}))
        add("Sandbox.archive (stopped)", lambda: (sb.stop(), sb.archive(), sb.start()))
        add("Sandbox.delete", lambda: sb.delete())
    finally:
        srv.finish()
    return rows


def main():
    rows = survey()
    print("| SDK method | result | message |\n|---|---|---|")
    for name, kind, msg in rows:
        print(f"| `{name}` | {kind} | {msg.replace('|', '/')} |")
    print(f"\n{sum(k == 'works' for _, k, _ in rows)} work, {sum(k == 'refused' for _, k, _ in rows)} refused, "
          f"{sum(k == 'fails' for _, k, _ in rows)} fail", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
