"""The `/files` toolbox routes, through the real Daytona SDK (`sandbox.fs`) against `corral serve`."""

import asyncio
import hashlib
import http.client
import json
import os
import posixpath
import tempfile
import uuid

import pytest
from daytona import (
    AsyncDaytona,
    DaytonaConfig,
    DaytonaError,
    DaytonaNotFoundError,
    FileDownloadRequest,
    FileUpload,
)


@pytest.fixture(scope="module")
def sb(daytona):
    s = daytona.create()
    yield s
    daytona.delete(s)


def sh(sb, cmd):
    r = sb.process.exec(cmd)
    assert r.exit_code == 0, (cmd, r.result)
    return r.result.strip()


def fresh(sb, prefix="t"):
    """A new, not yet existing directory name relative to the work dir."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def status_of(err):
    return getattr(err, "status_code", None)


def test_upload_many_nested_relative_paths_owned_by_the_user(sb):
    base = fresh(sb, "up")
    files = {
        f"{base}/a.txt": b"alpha\n",
        f"{base}/deep/er/b.bin": bytes(range(256)) * 3,
        f"{base}/deep/c.txt": b"",
        f"/tmp/{base}/abs/d.txt": b"absolute",
    }
    for i in range(20):
        files[f"{base}/many/f{i:02}.txt"] = f"file {i}\n".encode()
    sb.fs.upload_files([FileUpload(source=data, destination=dst) for dst, data in files.items()])

    work = sb.get_work_dir()
    # Relative paths land in the work dir; every file and created directory is the user's.
    assert sh(sb, f"cat {work}/{base}/a.txt") == "alpha"
    owners = sh(sb, f"stat -c '%U:%G %n' {work}/{base} {work}/{base}/deep {work}/{base}/deep/er "
                    f"{work}/{base}/deep/er/b.bin {work}/{base}/deep/c.txt /tmp/{base} /tmp/{base}/abs/d.txt")
    for line in owners.splitlines():
        assert line.startswith("daytona:daytona "), owners
    assert sh(sb, f"ls {work}/{base}/many | wc -l") == "20"

    results = sb.fs.download_files([FileDownloadRequest(source=p) for p in files])
    assert [r.source for r in results] == list(files)
    for r in results:
        assert r.error is None, r
        assert r.result == files[r.source], r.source


def test_upload_overwrites_and_keeps_mode(sb):
    path = f"/tmp/{fresh(sb)}.sh"
    sb.fs.upload_file(b"echo one\n", path)
    sb.fs.set_file_permissions(path, mode="755")
    sb.fs.upload_file(b"echo two\n", path)
    assert sb.fs.download_file(path) == b"echo two\n"
    assert sh(sb, f"stat -c %a {path}") == "755"
    assert sh(sb, path) == "two"


def test_upload_to_a_directory_is_an_error(sb):
    d = f"/tmp/{fresh(sb)}"
    sb.fs.create_folder(d, "755")
    with pytest.raises(DaytonaError) as e:
        sb.fs.upload_file(b"x", d)
    assert "is a directory" in str(e.value)
    assert sb.fs.get_file_info(d).is_dir


def test_download_missing_file_among_existing(sb):
    d = f"/tmp/{fresh(sb)}"
    sb.fs.upload_files([FileUpload(b"one", f"{d}/1"), FileUpload(b"two", f"{d}/2")])
    with tempfile.TemporaryDirectory() as local:
        results = sb.fs.download_files([
            FileDownloadRequest(source=f"{d}/1"),
            FileDownloadRequest(source=f"{d}/missing"),
            FileDownloadRequest(source=f"{d}/2", destination=os.path.join(local, "two")),
            FileDownloadRequest(source=d),  # a directory
        ])
        assert results[0].error is None and results[0].result == b"one"
        assert results[1].result is None
        assert "file not found" in results[1].error  # Daytona's words
        assert results[1].error_details.status_code == 404
        assert results[1].error_details.code == "FILE_NOT_FOUND"
        assert results[2].error is None
        with open(os.path.join(local, "two"), "rb") as f:
            assert f.read() == b"two"
        assert results[3].error_details.status_code == 400

    with pytest.raises(DaytonaNotFoundError):
        sb.fs.download_file(f"{d}/missing")


def test_binary_round_trip_and_streams(sb):
    data = bytes(range(256)) * 1000 + b"\r\n--boundary--\r\n\0\0" + os.urandom(100_000)
    path = f"/tmp/{fresh(sb)}/blob.bin"
    sb.fs.upload_file(data, path)
    assert sb.fs.download_file(path) == data
    assert b"".join(sb.fs.download_file_stream(path)) == data
    assert sh(sb, f"sha256sum {path}").split()[0] == hashlib.sha256(data).hexdigest()

    path2 = f"/tmp/{fresh(sb)}/streamed.bin"
    sent = []
    sb.fs.upload_file_stream(data, path2, on_progress=lambda p: sent.append(p.bytes_sent))
    assert sent and sent[-1] == len(data)
    assert sb.fs.download_file(path2) == data

    with pytest.raises(DaytonaNotFoundError):
        list(sb.fs.download_file_stream(f"/tmp/{fresh(sb)}-nope"))


def test_special_files(sb):
    # /proc files claim size 0 but have content; devices and FIFOs are refused, not streamed.
    assert sb.fs.download_file("/proc/1/cmdline").startswith(b"corral-agent")
    fifo = f"/tmp/{fresh(sb)}.fifo"
    sh(sb, f"mkfifo {fifo}")
    results = sb.fs.download_files([FileDownloadRequest(source="/dev/zero"), FileDownloadRequest(source=fifo)])
    for r in results:
        assert r.error_details.status_code == 400, r
        assert "not a regular file" in r.error


def test_unusual_file_names_round_trip(sb):
    d = f"/tmp/{fresh(sb)}"
    names = [f'{d}/quote"s.txt', f"{d}/back\\slash.txt", f"{d}/ünïcödé.txt", f"{d}/sp ace;semi=.txt"]
    sb.fs.upload_files([FileUpload(n.encode(), n) for n in names])
    results = sb.fs.download_files([FileDownloadRequest(source=n) for n in names])
    for n, r in zip(names, results):
        assert r.error is None, (n, r.error)
        assert r.result == n.encode()


def test_list_files_and_depth(sb):
    d = f"/tmp/{fresh(sb)}"
    sb.fs.upload_files([
        FileUpload(b"12345", f"{d}/b.txt"),
        FileUpload(b"x", f"{d}/a/inner.txt"),
        FileUpload(b"y", f"{d}/a/deeper/z.txt"),
    ])
    top = sb.fs.list_files(d)
    assert sorted(f.name for f in top) == ["a", "b.txt"]
    by_name = {f.name: f for f in top}
    assert by_name["a"].is_dir and not by_name["b.txt"].is_dir
    assert by_name["b.txt"].size == 5
    assert by_name["b.txt"].owner == "daytona"
    assert by_name["b.txt"].path == f"{d}/b.txt"

    two = sb.fs.list_files(d, depth=2)
    assert sorted(f.path for f in two) == sorted([f"{d}/a", f"{d}/b.txt", f"{d}/a/inner.txt", f"{d}/a/deeper"])

    with pytest.raises(DaytonaNotFoundError):
        sb.fs.list_files(f"{d}/missing")
    with pytest.raises(DaytonaError) as e:
        sb.fs.list_files(f"{d}/b.txt")
    assert status_of(e.value) == 400


def test_get_file_info(sb):
    path = f"/tmp/{fresh(sb)}.txt"
    sb.fs.upload_file(b"hello", path)
    sb.fs.set_file_permissions(path, mode="640")
    info = sb.fs.get_file_info(path)
    assert info.name == posixpath.basename(path)
    assert info.is_dir is False
    assert info.size == 5
    assert info.permissions == "0640"
    assert info.mode == "-rw-r-----"
    assert info.owner == "daytona" and info.group == "daytona"
    assert info.mod_time and info.modified_at
    assert sh(sb, f"date -u -r {path} +%Y-%m-%dT%H:%M:%S") == info.modified_at[:19]

    dinfo = sb.fs.get_file_info("/tmp")
    assert dinfo.is_dir and dinfo.mode.startswith("dt")

    with pytest.raises(DaytonaNotFoundError):
        sb.fs.get_file_info(f"/tmp/{fresh(sb)}-missing")


def test_create_folder(sb):
    base = fresh(sb, "mk")
    sb.fs.create_folder(f"{base}/x/y", "700")
    work = sb.get_work_dir()
    assert sh(sb, f"stat -c '%a %U' {work}/{base}/x/y") == "700 daytona"
    assert sh(sb, f"stat -c '%U' {work}/{base}/x") == "daytona"
    sb.fs.create_folder(f"{base}/x/y", "700")  # already there: fine
    with pytest.raises(DaytonaError) as e:
        sb.fs.create_folder(f"{base}/bad", "9z")
    assert status_of(e.value) == 400


def test_delete_file(sb):
    d = f"/tmp/{fresh(sb)}"
    sb.fs.upload_files([FileUpload(b"1", f"{d}/f"), FileUpload(b"2", f"{d}/sub/g")])
    sb.fs.delete_file(f"{d}/f")
    with pytest.raises(DaytonaNotFoundError):
        sb.fs.get_file_info(f"{d}/f")
    with pytest.raises(DaytonaError) as e:
        sb.fs.delete_file(d)
    assert status_of(e.value) == 400
    assert sb.fs.get_file_info(f"{d}/sub/g").size == 1
    sb.fs.delete_file(d, recursive=True)
    assert sh(sb, f"test -e {d} && echo yes || echo no") == "no"
    with pytest.raises(DaytonaNotFoundError):
        sb.fs.delete_file(d)


def test_move_files(sb):
    d = f"/tmp/{fresh(sb)}"
    sb.fs.upload_files([FileUpload(b"m", f"{d}/src.txt"), FileUpload(b"o", f"{d}/other.txt")])
    sb.fs.create_folder(f"{d}/dir", "755")
    sb.fs.move_files(f"{d}/src.txt", f"{d}/dir/dst.txt")
    assert sb.fs.download_file(f"{d}/dir/dst.txt") == b"m"
    with pytest.raises(DaytonaNotFoundError):
        sb.fs.get_file_info(f"{d}/src.txt")
    sb.fs.move_files(f"{d}/dir", f"{d}/renamed")
    assert sb.fs.download_file(f"{d}/renamed/dst.txt") == b"m"
    with pytest.raises(DaytonaError) as e:
        sb.fs.move_files(f"{d}/other.txt", f"{d}/renamed/dst.txt")
    assert status_of(e.value) == 409
    assert sb.fs.download_file(f"{d}/renamed/dst.txt") == b"m"
    with pytest.raises(DaytonaNotFoundError):
        sb.fs.move_files(f"{d}/nope", f"{d}/nope2")


def test_set_file_permissions(sb):
    path = f"/tmp/{fresh(sb)}.sh"
    sb.fs.upload_file(b"#!/bin/sh\necho ran\n", path)
    sb.fs.set_file_permissions(path, mode="755")
    assert sh(sb, f"stat -c %a {path}") == "755"
    assert sh(sb, path) == "ran"
    sb.fs.set_file_permissions(path, owner="root", group="root")
    assert sh(sb, f"stat -c '%U:%G %a' {path}") == "root:root 755"
    sb.fs.set_file_permissions(path, owner="daytona")
    assert sh(sb, f"stat -c '%U:%G' {path}") == "daytona:root"
    with pytest.raises(DaytonaError) as e:
        sb.fs.set_file_permissions(path, owner="no-such-user-xyz")
    assert status_of(e.value) == 400
    with pytest.raises(DaytonaNotFoundError):
        sb.fs.set_file_permissions(f"{path}.missing", mode="644")


def test_find_files(sb):
    d = f"/tmp/{fresh(sb)}"
    sb.fs.upload_files([
        FileUpload(b"first\n# TODO: fix\nlast TODO: too\n", f"{d}/a.py"),
        FileUpload(b"nothing here\n", f"{d}/sub/b.py"),
        FileUpload(b"x\nTODO: nested\n", f"{d}/sub/c.txt"),
        FileUpload(b"TODO: \0binary\n", f"{d}/bin.dat"),
    ])
    matches = sb.fs.find_files(d, "TODO:")
    got = sorted((m.file, m.line, m.content) for m in matches)
    assert got == [
        (f"{d}/a.py", 2, "# TODO: fix"),
        (f"{d}/a.py", 3, "last TODO: too"),
        (f"{d}/sub/c.txt", 2, "TODO: nested"),
    ]
    assert [m.line for m in sb.fs.find_files(f"{d}/a.py", "^last")] == [3]
    assert sb.fs.find_files(d, "absent-pattern") == []
    with pytest.raises(DaytonaNotFoundError):
        sb.fs.find_files(f"{d}/missing", "x")


def test_search_files(sb):
    d = f"/tmp/{fresh(sb)}"
    sb.fs.upload_files([
        FileUpload(b"", f"{d}/one.py"),
        FileUpload(b"", f"{d}/pkg/two.py"),
        FileUpload(b"", f"{d}/pkg/three.txt"),
        FileUpload(b"", f"{d}/test_x.py"),
    ])
    assert sorted(sb.fs.search_files(d, "*.py").files) == sorted(
        [f"{d}/one.py", f"{d}/pkg/two.py", f"{d}/test_x.py"])
    assert sb.fs.search_files(d, "test_*").files == [f"{d}/test_x.py"]
    assert sb.fs.search_files(d, "pkg").files == [f"{d}/pkg"]
    assert sb.fs.search_files(d, "*.rs").files == []
    with pytest.raises(DaytonaError) as e:
        sb.fs.search_files(d, "[")
    assert status_of(e.value) == 400


def test_replace_in_files(sb):
    d = f"/tmp/{fresh(sb)}"
    sb.fs.upload_files([
        FileUpload(b"a.b and a.b\n", f"{d}/1.txt"),
        FileUpload(b"no match\n", f"{d}/2.txt"),
    ])
    results = sb.fs.replace_in_files([f"{d}/1.txt", f"{d}/2.txt", f"{d}/missing.txt"], "a.b", "X")
    by_file = {r.file: r for r in results}
    assert by_file[f"{d}/1.txt"].success is True
    assert by_file[f"{d}/2.txt"].success is True
    assert by_file[f"{d}/missing.txt"].success is False
    assert "no such file" in by_file[f"{d}/missing.txt"].error.lower()
    assert sb.fs.download_file(f"{d}/1.txt") == b"X and X\n"
    assert sb.fs.download_file(f"{d}/2.txt") == b"no match\n"
    assert sh(sb, f"stat -c %U {d}/1.txt") == "daytona"


def toolbox(server, sb, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    h = {"Authorization": f"Bearer {server.key}", **(headers or {})}
    conn.request(method, f"/toolbox/{sb.id}{path}", body=body, headers=h)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, resp.getheader("Content-Type"), data


def test_raw_download_and_upload_v2(server, sb):
    d = f"/tmp/{fresh(sb)}"
    data = bytes(range(256)) * 10
    boundary = "xYzBoundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    status, _, resp = toolbox(server, sb, "POST", f"/files/upload-v2?path={d}/v2.bin", body,
                              {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200, resp
    uploaded = json.loads(resp)
    assert uploaded["name"] == "v2.bin" and uploaded["path"] == f"{d}/v2.bin" and uploaded["type"]
    assert sh(sb, f"stat -c %U {d}/v2.bin") == "daytona"

    status, _, got = toolbox(server, sb, "GET", f"/files/download?path={d}/v2.bin")
    assert status == 200 and got == data

    status, ctype, err = toolbox(server, sb, "GET", f"/files/download?path={d}/missing")
    assert status == 404 and ctype.startswith("application/json")
    assert json.loads(err)["code"] == "FILE_NOT_FOUND"

    status, _, err = toolbox(server, sb, "POST", "/files/bulk-upload", b"not multipart",
                             {"Content-Type": "text/plain"})
    assert status == 400, err


def test_truncated_upload_leaves_nothing_behind(server, sb):
    d = f"/tmp/{fresh(sb)}"
    sb.fs.upload_file(b"old", f"{d}/t.bin")
    b = "trunc"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"files[0].path\"\r\n\r\n{d}/t.bin\r\n"
            f"--{b}\r\nContent-Disposition: form-data; name=\"files[0].file\"; filename=\"t\"\r\n\r\n").encode()
    body += os.urandom(3 << 20)  # no closing boundary: the body ends mid-file
    status, ctype, err = toolbox(server, sb, "POST", "/files/bulk-upload", body,
                                 {"Content-Type": f"multipart/form-data; boundary={b}"})
    assert status == 400, err
    assert ctype.startswith("application/json")
    # The old file is untouched and no temporary file is left.
    assert sb.fs.download_file(f"{d}/t.bin") == b"old"
    assert sh(sb, f"ls -A {d}") == "t.bin"


def test_oversized_path_field_is_rejected(server, sb):
    b = "big"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"files[0].path\"\r\n\r\n" + "a" * (200 << 10)
            + f"\r\n--{b}--\r\n").encode()
    status, _, err = toolbox(server, sb, "POST", "/files/bulk-upload", body,
                             {"Content-Type": f"multipart/form-data; boundary={b}"})
    assert status == 400, err
    assert "longer than" in json.loads(err)["message"]


def test_bulk_download_edges(server, sb):
    status, ctype, body = toolbox(server, sb, "POST", "/files/bulk-download", json.dumps({"paths": []}),
                                  {"Content-Type": "application/json"})
    assert status == 200 and ctype.startswith("multipart/form-data; boundary=")
    boundary = ctype.split("boundary=")[1]
    assert body == f"--{boundary}--\r\n".encode()
    status, ctype, body = toolbox(server, sb, "POST", "/files/bulk-download", b"{not json",
                                  {"Content-Type": "application/json"})
    assert status == 400 and json.loads(body)["statusCode"] == 400


def test_async_upload_download_list(server, sb):
    d = f"/tmp/{fresh(sb)}"
    blob = os.urandom(300_000)

    async def run():
        async with AsyncDaytona(DaytonaConfig(api_url=f"{server.url}/api", api_key=server.key)) as client:
            asb = await client.get(sb.id)
            await asb.fs.upload_files([FileUpload(b"hi", f"{d}/x.txt"), FileUpload(blob, f"{d}/sub/blob")])
            await asb.fs.upload_file(b"single", f"{d}/single.txt")
            listed = await asb.fs.list_files(d)
            got = await asb.fs.download_file(f"{d}/sub/blob")
            results = await asb.fs.download_files([FileDownloadRequest(source=f"{d}/x.txt"),
                                                   FileDownloadRequest(source=f"{d}/none")])
            missing_error = None
            try:
                await asb.fs.download_file(f"{d}/none")
            except DaytonaNotFoundError as e:
                missing_error = e
            return listed, got, results, missing_error

    listed, got, results, missing_error = asyncio.run(run())
    assert sorted(f.name for f in listed) == ["single.txt", "sub", "x.txt"]
    assert got == blob
    assert results[0].result == b"hi" and results[1].error_details.status_code == 404
    assert missing_error is not None
    assert sh(sb, f"stat -c %U {d}/sub/blob {d}/sub | sort -u") == "daytona"


def agent_hwm_kib(sb):
    """The peak resident memory of the sandbox's agent (its PID 1)."""
    assert sh(sb, "tr '\\0' ' ' < /proc/1/cmdline").startswith("corral-agent")
    status = sh(sb, "cat /proc/1/status")
    line = next(l for l in status.splitlines() if l.startswith("VmHWM:"))
    return int(line.split()[1])


def test_256_mib_upload_and_download_keep_agent_memory_bounded(daytona, server):
    sb = daytona.create()
    try:
        size = 256 << 20
        block = hashlib.sha256(b"corral-seed").digest() * (1 << 15)  # 1 MiB seeded pattern
        with tempfile.TemporaryDirectory() as local:
            src = os.path.join(local, "big.bin")
            h = hashlib.sha256()
            with open(src, "wb") as f:
                for i in range(size // len(block)):
                    chunk = i.to_bytes(8, "little") + block[8:]
                    f.write(chunk)
                    h.update(chunk)
            want = h.hexdigest()

            before = agent_hwm_kib(sb)
            sb.fs.upload_file(src, "big/big.bin")
            work = sb.get_work_dir()
            assert sh(sb, f"stat -c '%s %U' {work}/big/big.bin") == f"{size} daytona"
            assert sh(sb, f"sha256sum {work}/big/big.bin").split()[0] == want

            dst = os.path.join(local, "back.bin")
            sb.fs.download_file("big/big.bin", dst)
            h2 = hashlib.sha256()
            with open(dst, "rb") as f:
                for piece in iter(lambda: f.read(1 << 20), b""):
                    h2.update(piece)
            assert os.path.getsize(dst) == size
            assert h2.hexdigest() == want

            after = agent_hwm_kib(sb)
            # A buffered copy of the file would push the peak past 256 MiB; streaming keeps
            # the agent far below that.
            assert before < 32 * 1024, before
            assert after < 64 * 1024, (before, after)
            print(f"agent VmHWM: {before} KiB before, {after} KiB after 2 x 256 MiB")
    finally:
        daytona.delete(sb)
