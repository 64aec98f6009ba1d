"""Pre-signed file URLs (`sandbox.download_url` / `upload_url` / `rotate_signing_key`) through
the Daytona SDK against a real `corral serve`: they work with no API key, and only for the
operation, path and time they were signed for."""

import base64
import hashlib
import hmac
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest


def fetch(url, method="GET", body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def multipart(content: bytes):
    boundary = "corral-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def with_query(url, **changes):
    parts = urllib.parse.urlsplit(url)
    q = dict(urllib.parse.parse_qsl(parts.query))
    q.update(changes)
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(q)))


def test_signed_urls_download_and_upload_without_a_key(sandbox):
    sandbox.fs.upload_file(b"report body", "/tmp/report.txt")
    url = sandbox.download_url("/tmp/report.txt")
    assert "signature=v1_" in url and "Authorization" not in url
    assert fetch(url) == (200, b"report body")

    up = sandbox.upload_url("/tmp/uploaded.bin", ttl_seconds=120)
    body, headers = multipart(b"\x00\x01 sent with a signed url")
    status, answer = fetch(up, "POST", body, headers)
    assert status in (200, 201), answer
    assert sandbox.fs.download_file("/tmp/uploaded.bin") == b"\x00\x01 sent with a signed url"


def test_signed_urls_are_bound_to_operation_path_time_and_key(server, sandbox):
    sandbox.fs.upload_file(b"secret", "/tmp/a.txt")
    url = sandbox.download_url("/tmp/a.txt")
    # Another path, another expiry, a forged signature, a download signature used to upload.
    for bad in (with_query(url, path="/etc/shadow"),
                with_query(url, expires=str(int(time.time()) + 99999)),
                with_query(url, signature="v1_" + "A" * 43)):
        status, body = fetch(bad)
        assert status == 403, (bad, body)
    upload_as_download = url.replace("/files/download?", "/files/upload-v2?")
    body, headers = multipart(b"x")
    assert fetch(upload_as_download, "POST", body, headers)[0] == 403
    # Expired: signed correctly with the key, for a time already past.
    status, key = server.request("GET", f"/api/sandbox/{sandbox.id}/signing-key")
    assert status == 200 and isinstance(key, str) and len(key) >= 32
    past = int(time.time()) - 5
    sig = "v1_" + base64.urlsafe_b64encode(hmac.new(
        key.encode(), f"v1:files:GET:/tmp/a.txt:{past}".encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    status, body = fetch(with_query(url, expires=str(past), signature=sig))
    assert status == 403 and b"expired" in body, body
    # No signature at all: the API key is needed, as for any toolbox call.
    assert fetch(url.split("?")[0] + "?path=/tmp/a.txt")[0] == 401
    # Rotating the key voids what was signed before.
    assert fetch(url)[0] == 200
    sandbox.rotate_signing_key()
    assert fetch(url)[0] == 403
    assert fetch(sandbox.download_url("/tmp/a.txt")) == (200, b"secret")
