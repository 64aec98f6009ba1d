"""What Daytona's own examples and SDK e2e tests (its last public release) rely on beyond the
routes themselves: `python` on the default image's PATH and `autoArchiveInterval: 0` answered
as the maximum. (Their LSP and code-interpreter cases are in test_lsp.py and
test_interpreter.py.)"""

import os

from daytona import CreateSandboxFromSnapshotParams


def test_python_is_on_the_default_images_path(sandbox):
    # Daytona's default image has `python`; a Debian host ships only `python3`.
    r = sandbox.process.exec("python -c 'print(1)'", timeout=30)
    assert r.exit_code == 0 and r.result.strip() == "1", r.result
    r = sandbox.process.exec("python --version; python3 --version", timeout=30)
    versions = r.result.split()
    assert versions[0] == versions[2] == "Python" and versions[1] == versions[3], r.result
    # The host is untouched: the link lives in the sandbox's view of /usr only.
    if not os.path.lexists("/usr/local/bin/python") and not os.path.lexists("/usr/bin/python"):
        assert sandbox.process.exec("readlink /usr/local/bin/python").result.strip() == "/usr/bin/python3"


def test_auto_archive_zero_is_the_maximum(daytona):
    sb = daytona.create(CreateSandboxFromSnapshotParams(auto_archive_interval=0))
    try:
        assert sb.auto_archive_interval == 43200
        # The SDK's setter keeps the value it sent on the object: read the server's back.
        sb.set_auto_archive_interval(60)
        assert daytona.get(sb.id).auto_archive_interval == 60
        sb.set_auto_archive_interval(0)
        assert daytona.get(sb.id).auto_archive_interval == 43200
    finally:
        daytona.delete(sb, wait=True)
