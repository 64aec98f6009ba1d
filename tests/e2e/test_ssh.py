"""SSH access (issue 16, item 8): the real Python SDK grants a token, the real OpenSSH
clients (`ssh`, `sftp`) use the command it returns against corral's SSH gateway."""

import asyncio
import hashlib
import os
import shlex
import subprocess
import uuid

import pytest
from daytona import AsyncDaytona, DaytonaConfig

SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]


def ssh_argv(access, *command, opts=()):
    """The SDK's `sshCommand` as an argv, with the options a script needs."""
    argv = shlex.split(access.ssh_command)
    assert argv[0] == "ssh"
    return ["ssh", *SSH_OPTS, *opts, *argv[1:], *command]


def run_ssh(access, *command, opts=(), input=None, timeout=30):
    return subprocess.run(ssh_argv(access, *command, opts=opts), input=input,
                          capture_output=True, timeout=timeout)


def test_exec_output_stdin_and_exit_code(server, sandbox):
    access = sandbox.create_ssh_access(30)
    assert access.sandbox_id == sandbox.id
    assert access.ssh_command == f"ssh -p {server.ssh_port} {access.token}@127.0.0.1"
    r = run_ssh(access, "echo hi; id -un; echo oops >&2; exit 3")
    assert r.returncode == 3, r
    assert r.stdout.decode().splitlines() == ["hi", "daytona"]
    assert r.stderr.decode().strip() == "oops"
    # stdin reaches the command, and its end is seen.
    r = run_ssh(access, "wc -c; cat /etc/hostname", input=b"x" * 100_000)
    assert r.returncode == 0, r
    assert r.stdout.decode().split()[0] == "100000"


def test_pty_shell(server, sandbox):
    access = sandbox.create_ssh_access()
    r = subprocess.run(["ssh", *SSH_OPTS, "-tt", *shlex.split(access.ssh_command)[1:]],
                       input=b"echo TERM=$TERM; tty; exit 7\n", capture_output=True,
                       timeout=30, env=dict(os.environ, TERM="xterm-corral-test"))
    out = r.stdout.decode(errors="replace")
    assert "TERM=xterm-corral-test" in out, out
    assert "/dev/pts/" in out, out
    assert r.returncode == 7, (r.returncode, out)


def sftp_target(access):
    """(`-P port`, `token@host`) from the SDK's `sshCommand`."""
    argv = shlex.split(access.ssh_command)
    assert argv[1] == "-p"
    return argv[2], argv[3]


def run_sftp(access, batch, timeout=60):
    """`sftp -b -` with `batch` (stops at the first failing command, exit code 1)."""
    port, target = sftp_target(access)
    return subprocess.run(["sftp", *SSH_OPTS, "-P", port, "-b", "-", target],
                          input=batch.encode(), capture_output=True, timeout=timeout)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def test_sftp_batch_put_get_mkdir_ls_rename_rm(server, sandbox, tmp_path):
    access = sandbox.create_ssh_access()
    home = sandbox.process.exec("echo $HOME").result.strip()
    data = os.urandom(3 * 1024 * 1024)
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    back = tmp_path / "back.bin"
    r = run_sftp(access, f"""pwd
mkdir up
cd up
put -p {local} big.bin
rename big.bin moved.bin
chmod 640 moved.bin
symlink moved.bin ln
ls -l
get moved.bin {back}
""")
    out = r.stdout.decode()
    assert r.returncode == 0, r
    # Paths are relative to the sandbox user's home.
    assert f"Remote working directory: {home}" in out, out
    listing = sorted((f[0], f[-1]) for f in map(str.split, out.splitlines())
                     if f and len(f[0]) == 10 and f[0][0] in "-l")
    assert listing == [("-rw-r-----", "moved.bin"), ("lrwxrwxrwx", "ln")], out
    # Down: the same bytes came back.
    assert sha256(back.read_bytes()) == sha256(data)
    # Up: the sandbox sees the same bytes, owned by its user, with the mode and times set.
    path = f"{home}/up/moved.bin"
    assert sha256(sandbox.fs.download_file(path)) == sha256(data)
    info = sandbox.fs.get_file_info(path)
    assert info.owner == "daytona" and info.size == len(data), info
    check = sandbox.process.exec(
        f"cd {home}/up && sha256sum moved.bin && stat -c %U:%a:%Y moved.bin && readlink ln")
    lines = check.result.split()
    assert lines[0] == sha256(data), check.result
    assert lines[2] == f"daytona:640:{int(local.stat().st_mtime)}", check.result
    assert lines[3] == "moved.bin", check.result
    # Remove what was made; the sandbox sees it gone.
    r = run_sftp(access, "rm up/ln\nrm up/moved.bin\nrmdir up\nls\n")
    assert r.returncode == 0, r
    assert sandbox.process.exec(f"test -e {home}/up || echo gone").result.strip() == "gone"
    # A missing file is an error, not a hang.
    r = run_sftp(access, "get nothing-here /dev/null\n")
    assert r.returncode != 0 and b"not found" in r.stderr.lower(), r


def test_scp_upload_and_download(server, sandbox, tmp_path):
    """Modern `scp` runs over SFTP (the default since OpenSSH 9.0; `-s` insists on it)."""
    access = sandbox.create_ssh_access()
    port, target = sftp_target(access)
    data = os.urandom(512 * 1024)
    local = tmp_path / "up.bin"
    local.write_bytes(data)
    r = subprocess.run(["scp", "-s", *SSH_OPTS, "-P", port, str(local), f"{target}:scp.bin"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r
    home = sandbox.process.exec("echo $HOME").result.strip()
    assert sandbox.fs.download_file(f"{home}/scp.bin") == data
    assert sandbox.fs.get_file_info(f"{home}/scp.bin").owner == "daytona"
    down = tmp_path / "down.bin"
    r = subprocess.run(["scp", "-s", *SSH_OPTS, "-P", port, f"{target}:scp.bin", str(down)],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r
    assert down.read_bytes() == data


def test_sftp_permission_denied_is_an_error(server, sandbox, tmp_path):
    """The server runs as the sandbox user: root's files stay root's, and the client is told
    so promptly."""
    access = sandbox.create_ssh_access()
    local = tmp_path / "f"
    local.write_bytes(b"not a shadow file\n")
    before = sandbox.process.exec("sha256sum /etc/shadow /etc/passwd 2>&1").result
    has_shadow = sandbox.process.exec("test -e /etc/shadow && echo yes").result.strip() == "yes"
    batches = [f"put {local} /etc/shadow\n", f"put {local} /etc/passwd\n", "rm /etc/hostname\n"]
    if has_shadow:
        batches.append("get /etc/shadow /dev/null\n")
    for batch in batches:
        r = run_sftp(access, batch, timeout=30)
        assert r.returncode != 0, (batch, r)
        assert b"permission denied" in r.stderr.lower(), (batch, r)
    assert sandbox.process.exec("sha256sum /etc/shadow /etc/passwd 2>&1").result == before
    # Control: the same upload into the home directory works.
    r = run_sftp(access, f"put {local} f\n", timeout=30)
    assert r.returncode == 0, r


def test_validate_revoke_and_refusal(server, sandbox):
    access = sandbox.create_ssh_access(5)
    v = sandbox.validate_ssh_access(access.token)
    assert v.valid and v.sandbox_id == sandbox.id
    assert run_ssh(access, "true").returncode == 0
    sandbox.revoke_ssh_access(access.token)
    v = sandbox.validate_ssh_access(access.token)
    assert not v.valid
    r = run_ssh(access, "echo should-not-run")
    assert r.returncode == 255 and b"should-not-run" not in r.stdout, r
    assert b"Permission denied" in r.stderr, r
    # A made-up token is refused the same way.
    fake = access.ssh_command.replace(access.token, "A" * 32)
    r = subprocess.run(["ssh", *SSH_OPTS, *shlex.split(fake)[1:], "true"], capture_output=True,
                       timeout=30)
    assert r.returncode == 255 and b"Permission denied" in r.stderr, r


def test_revoked_mid_connection_opens_no_new_channel(server, sandbox, tmp_path):
    """A connection kept open (OpenSSH multiplexing) cannot open a new channel once the
    token is revoked."""
    access = sandbox.create_ssh_access()
    ctl = tmp_path / "ctl"
    mux = ["-o", "ControlMaster=auto", "-o", f"ControlPath={ctl}", "-o", "ControlPersist=30"]
    assert run_ssh(access, "echo first", opts=mux).stdout == b"first\n"
    try:
        sandbox.revoke_ssh_access(access.token)
        r = run_ssh(access, "echo second", opts=mux)
        assert b"second" not in r.stdout, r
        assert r.returncode != 0 and b"invalid or expired" in r.stderr, r
    finally:
        subprocess.run(["ssh", *SSH_OPTS, *mux, "-O", "exit", *shlex.split(access.ssh_command)[1:]],
                       capture_output=True, timeout=10)


def test_token_reaches_only_its_sandbox(server, daytona):
    a = daytona.create()
    b = daytona.create()
    try:
        marker = uuid.uuid4().hex
        a.process.exec(f"echo {marker} > /tmp/marker")
        to_a = a.create_ssh_access()
        to_b = b.create_ssh_access()
        assert run_ssh(to_a, "cat /tmp/marker").stdout.decode().strip() == marker
        r = run_ssh(to_b, "cat /tmp/marker; hostname")
        assert marker.encode() not in r.stdout, r
        # Control: each token lands in its own sandbox.
        assert run_ssh(to_a, "hostname").stdout != run_ssh(to_b, "hostname").stdout
        # SFTP too: a file put through a's token is in a alone.
        r = run_sftp(to_a, f"put /etc/hostname /tmp/sftp-{marker}\nls /tmp\n")
        listed = [l for l in r.stdout.splitlines() if not l.startswith(b"sftp>")]
        assert r.returncode == 0 and any(marker.encode() in l for l in listed), r
        assert a.process.exec(f"test -f /tmp/sftp-{marker} && echo yes").result.strip() == "yes"
        r = run_sftp(to_b, f"ls /tmp\nget /tmp/sftp-{marker} /dev/null\n")
        listed = [l for l in r.stdout.splitlines() if not l.startswith(b"sftp>")]
        assert r.returncode != 0 and not any(marker.encode() in l for l in listed), r
        assert b"not found" in r.stderr.lower(), r
        # Revoking through the other sandbox does nothing to a's token.
        b.revoke_ssh_access(to_a.token)
        assert a.validate_ssh_access(to_a.token).valid
    finally:
        daytona.delete(a, wait=True)
        daytona.delete(b, wait=True)


def test_stopped_sandbox_is_refused_not_started(server, sandbox):
    access = sandbox.create_ssh_access()
    sandbox.stop()
    try:
        r = run_ssh(access, "echo ran")
        assert b"ran" not in r.stdout
        assert r.returncode == 255, r
        assert b"stopped" in r.stderr, r
        sandbox.refresh_data()
        assert sandbox.state.value == "stopped"
    finally:
        sandbox.start()


def test_bad_expiry_is_a_400(server, sandbox):
    status, body = server.request("POST", f"/api/sandbox/{sandbox.id}/ssh-access?expiresInMinutes=0")
    assert status == 400 and "expiresInMinutes" in body["message"], body
    status, body = server.request("POST", f"/api/sandbox/{sandbox.id}/ssh-access?expiresInMinutes=99999")
    assert status == 400 and "expiresInMinutes" in body["message"], body


def test_async_sdk(server, sandbox):
    async def go():
        async with AsyncDaytona(DaytonaConfig(api_key=server.key, api_url=f"{server.url}/api")) as d:
            sb = await d.get(sandbox.id)
            access = await sb.create_ssh_access(10)
            v = await sb.validate_ssh_access(access.token)
            assert v.valid and v.sandbox_id == sandbox.id
            await sb.revoke_ssh_access(access.token)
            assert not (await sb.validate_ssh_access(access.token)).valid
            return access
    access = asyncio.run(asyncio.wait_for(go(), 60))
    assert run_ssh(access, "true").returncode == 255
