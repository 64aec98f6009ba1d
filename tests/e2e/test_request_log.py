"""Every 4xx is logged at info level with the request id the client got back in
`x-request-id`, the status, code and message, and method and path for unmatched routes; and
nothing secret: not the API key (right or wrong), not a query string (signed-URL and SSH
tokens travel there), not a token in a path (signed preview URLs)."""

import http.client
import json
import time

KEY_GUESS = "wrong_" + "k3y" * 8
QUERY_SECRET = "qsecret" + "9" * 12
PATH_SECRET = "psecret" + "7" * 12


def call(server, method, path, body=None, key=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request(method, path, body=body, headers={"Authorization": f"Bearer {key or server.key}",
                                                  "Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, resp.getheader("x-request-id")


def read_log(server):
    with open(server.log.name, errors="replace") as f:
        return f.read()


def client_errors(server, rid, timeout=10):
    """The `client error` lines (JSON, the server's default log format) of request `rid`."""
    deadline = time.time() + timeout
    while True:
        found = []
        for line in read_log(server).splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("message") == "client error" and entry.get("span", {}).get("request_id") == rid:
                found.append(entry)
        if found or time.time() > deadline:
            return found
        time.sleep(0.05)


def test_4xx_are_logged_with_the_request_id_and_no_secret(server):
    cases = [
        # (method, path, body, key, status, code, the logged path, words of the logged error)
        ("GET", f"/api/no-such-route?token={QUERY_SECRET}", None, None, 404, "NOT_FOUND",
         "/api/no-such-route", "no route for GET /api/no-such-route"),
        ("POST", "/api/sandbox", "{not json", None, 400, "BAD_REQUEST", "/api/sandbox", "invalid request body"),
        ("GET", "/api/sandbox", None, KEY_GUESS, 401, "UNAUTHORIZED", "/api/sandbox", "API key"),
        ("POST", f"/api/sandbox/nope/ports/3000/signed-preview-url/{PATH_SECRET}/expire", None, None, 404,
         "SANDBOX_NOT_FOUND", "/api/sandbox/nope/ports/3000/signed-preview-url/<redacted>/expire", "nope"),
    ]
    for method, path, body, key, status, code, logged_path, words in cases:
        got, rid = call(server, method, path, body, key)
        assert got == status and rid, (path, got, rid)
        lines = client_errors(server, rid)
        assert len(lines) == 1, (path, rid, lines)
        entry = lines[0]
        assert entry["level"] == "INFO", entry
        assert (entry["status"], entry["code"], entry["method"], entry["path"]) == (status, code, method, logged_path), entry
        assert words in entry["error"], entry
        assert entry["span"]["path"] == logged_path, entry
    # Positive control above found every line; now nothing secret anywhere in the log.
    text = read_log(server)
    for secret in (server.key, KEY_GUESS, QUERY_SECRET, PATH_SECRET):
        assert secret not in text, secret


def test_2xx_are_not_logged_as_client_errors(server):
    got, rid = call(server, "GET", "/api/sandbox")
    assert got == 200 and rid
    assert client_errors(server, rid, timeout=0.5) == []
