# corral interpreter context: one persistent python namespace, driven by the agent.
#
# Run as `python3 -u -c <this> <fd>`. <fd> is a unix stream socket to the agent. Both
# directions carry JSON lines:
#   agent -> here:  {"code": str, "envs": {str: str}}            (one run)
#   here -> agent:  {"type": "ready"}                            (once, at start)
#                   {"type": "stdout"|"stderr", "text": str}     (as written)
#                   {"type": "error", "name", "value", "traceback"}
#                   {"type": "done"}                             (end of a run)
# sys.stdout/sys.stderr are replaced by writers that send over the socket what was written
# once it holds a newline (so `print` gives one message per line, as Daytona's worker does)
# or reaches _LINE_MAX characters, and whatever is left before an error or the end of a run;
# writing to one stream first sends what the other holds, so their order is kept. fds 1 and
# 2 stay pipes the agent reads too (subprocesses, C extensions).
# SIGINT interrupts a run (KeyboardInterrupt); between runs it is ignored (so a handler the
# user code installs for SIGINT lasts only for its run).
import io
import json
import linecache
import os
import signal
import socket
import sys
import threading
import traceback

_sock = socket.socket(fileno=int(sys.argv[1]))
_lock = threading.Lock()
_INT = {signal.SIGINT}
_CHUNK = 16384
_LINE_MAX = 1024


def _send(obj):
    # Lone surrogates become "?": the agent only accepts valid UTF-8.
    data = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8", "replace")
    # No KeyboardInterrupt in the middle of a frame.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _INT)
    try:
        with _lock:
            _sock.sendall(data)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _Stream(io.TextIOBase):
    def __init__(self, kind, fd):
        self._kind = kind
        self._fd = fd
        self._held = []
        self._size = 0

    def writable(self):
        return True

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not " + type(s).__name__)
        if not s:
            return 0
        for other in _STREAMS:
            if other is not self:
                other.flush()
        self._held.append(s)
        self._size += len(s)
        if "\n" in s or self._size >= _LINE_MAX:
            self.flush()
        return len(s)

    def flush(self):
        if not self._held:
            return
        text = "".join(self._held)
        self._held = []
        self._size = 0
        # Bounded frames: WebSocket clients cap message sizes (aiohttp: 4 MiB).
        for at in range(0, len(text), _CHUNK):
            _send({"type": self._kind, "text": text[at : at + _CHUNK]})

    def isatty(self):
        return False

    def fileno(self):
        return self._fd

    @property
    def encoding(self):
        return "utf-8"

    @property
    def errors(self):
        return "strict"


_STREAMS = (_Stream("stdout", 1), _Stream("stderr", 2))
sys.stdout, sys.stderr = _STREAMS


def _flush_all():
    for stream in _STREAMS:
        try:
            stream.flush()
        except Exception:
            pass
signal.pthread_sigmask(signal.SIG_UNBLOCK, _INT)

_globals = {"__name__": "__main__", "__doc__": None, "__builtins__": __builtins__}
_count = 0


def _report(exc):
    _flush_all()
    tb = exc.__traceback__
    # Drop this script's own frame (the exec call).
    while tb is not None and tb.tb_frame.f_code.co_filename == _report.__code__.co_filename:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    _send({"type": "error", "name": type(exc).__name__, "value": str(exc), "traceback": text})


def _run(request):
    global _count
    _count += 1
    name = "<cell-%d>" % _count
    code = request.get("code", "")
    envs = request.get("envs") or {}
    saved = {k: os.environ.get(k) for k in envs}
    try:
        os.environ.update(envs)
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)
        exec(compile(code, name, "exec"), _globals)
    except BaseException as exc:  # noqa: BLE001 - everything is the user's error
        _report(exc)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _flush_all()
        try:
            sys.__stdout__.flush()
            sys.__stderr__.flush()
        except Exception:
            pass


def _quiet():
    # SIGINT only interrupts runs: ignored while waiting, so a late one cannot hit a read.
    while True:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return
        except KeyboardInterrupt:
            continue


def _main():
    _quiet()
    _send({"type": "ready"})
    reader = _sock.makefile("rb")
    while True:
        line = reader.readline()
        if not line:
            return
        request = json.loads(line)
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _run(request)
        except KeyboardInterrupt:
            pass
        finally:
            _quiet()
        _flush_all()
        _send({"type": "done"})


_main()
