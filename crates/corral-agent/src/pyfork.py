# corral-agent's python fork server. The agent runs it as
# `python3 -u -c <this file> <fd> [<charts.py>]`,
# as the sandbox user, with the sandbox's env and cwd; <fd> is a unix stream socket to the agent.
# Each request forks a child that runs the code as `python3 -u - <argv..>` would.
#
# Frames both ways: 4-byte big-endian length + UTF-8 JSON.
#   agent -> server: {"id", "code", "argv", "env", "cwd"}, with exactly one fd attached
#       (SCM_RIGHTS): the write end of the run's output pipe. "env" holds only the variables
#       the request changes; the agent sends none that affect interpreter start-up.
#   server -> agent: {"ready": true, "version"} once; per request {"id", "pid"} (forked),
#       {"id", "stale": true} (sys.path/site-packages changed since start-up: the agent must
#       use a fresh server), {"id", "cold": true} (code this server cannot run exactly like a
#       fresh interpreter: the agent must run `python3 -` itself) or {"id", "error"};
#       {"pid", "exit"} when a child has been reaped (exit status, or 128 + signal).
# Once the agent has closed the socket, or once stale, the server exits as soon as it has no
# child left.
#
# A child looks like a fresh `python3 -u -`: own process group; stdout+stderr the output pipe,
# stdin a pipe at EOF; argv, orig_argv, environ, cwd; no fd of the server's; default SIGCHLD and
# no wakeup fd; sys.modules and sys.path_importer_cache as at start-up (modules the server or
# earlier runs imported are gone); a new __main__ like `-`'s (__file__ "<stdin>"); the code
# compiled as "<stdin>". It ends like CPython's shutdown: SystemExit and uncaught exceptions
# reported by the same rules (tracebacks without this script's frames, KeyboardInterrupt
# exits by SIGINT), non-daemon threads joined, atexit, std streams flushed (120 if that fails),
# the run's modules released so finalizers and unclosed files run; then os._exit, because a
# full interpreter teardown would cost more than the fork saves.
# Known differences: getppid() is this server; the hash seed, gc.freeze()'d objects and
# address layout are shared by all runs; frames above the code's own (sys._getframe,
# warnings with a large stacklevel) show this script; the order of finalizers across modules
# at exit may differ; sys.meta_path starts with charts.py's finder (matplotlib figures become
# chart artifacts); on Python <= 3.9 some SyntaxError positions differ; modules imported at
# start-up (site, .pth files) keep what they read from the env at the server's start.
import sys

_BASELINE = set(sys.modules)
# `-c` imports linecache (3.12+), `-` does not.
_BASELINE.discard("linecache")
_BASE_FINDERS = set(sys.path_importer_cache)
_LOADER = sys.modules["__main__"].__dict__.get("__loader__")

import os
import select
import signal
import socket
import json
import gc
import _io
import _weakref

_BUFFERED = (_io.TextIOWrapper, _io.BufferedWriter, _io.BufferedRandom)

# charts.py, when the agent passes it: its FINDER goes first on every child's sys.meta_path
# (it does nothing until the code imports matplotlib).
_CHARTS = {"__name__": "corral_charts", "__builtins__": sys.modules["builtins"]}
if len(sys.argv) > 2:
    exec(compile(sys.argv[2], "<corral charts>", "exec", dont_inherit=True), _CHARTS)

_MAX_FRAME = 1 << 30


def _fatal(message):
    try:
        os.write(2, ("corral python fork server: %s\n" % message).encode())
    finally:
        os._exit(70)


def _site_dirs():
    dirs = set(p for p in sys.path if p)
    try:
        import site

        dirs.update(site.getsitepackages())
        dirs.add(site.getusersitepackages())
    except Exception:
        pass
    return sorted(dirs)


def _site_state(dirs):
    state = []
    for d in dirs:
        try:
            st = os.stat(d)
            state.append((st.st_ino, st.st_mtime_ns))
        except OSError:
            state.append(None)
    return state


def _declares_encoding(code):
    """Whether `code` starts with a BOM or may carry a PEP 263 encoding declaration: a fresh
    `python3 -` treats those differently from `compile`, so they run cold."""
    source = code.encode()
    if source.startswith(b"\xef\xbb\xbf"):
        return True
    for line in source.split(b"\n", 2)[:2]:
        if line.lstrip(b" \t\f").startswith(b"#") and (b"coding:" in line or b"coding=" in line):
            return True
    return False


def _exit_code(status):
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return None


def _serve(ctrl_fd):
    """Serves requests; returns (request) only in a forked child, ready to run its code."""
    ctrl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, ctrl_fd)
    ctrl.setblocking(True)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    try:
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    except TypeError:  # before 3.7
        signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    dirs = _site_dirs()
    site_state = _site_state(dirs)
    poller = select.poll()
    poller.register(ctrl_fd, select.POLLIN)
    poller.register(wake_r, select.POLLIN)

    def send(message):
        data = json.dumps(message).encode()
        try:
            ctrl.sendall(len(data).to_bytes(4, "big") + data)
        except OSError:
            os._exit(0)  # the agent is gone

    children = set()
    fds = []  # received, not yet used: one per request, in order
    buf = bytearray()
    eof = stale = False
    # The compiler's first use costs up to a millisecond; pay it once, here.
    compile(b"def f(x):\n    return [x, 'a', 1.0]\nprint(f(1))\n", "<stdin>", "exec", dont_inherit=True)
    # Once here rather than in every child: the server imports nothing from now on (it uses
    # the module objects it holds), children recheck anyway.
    _forget_imports()
    if hasattr(gc, "freeze"):
        gc.freeze()  # children never scan (and so never copy) the server's objects
    send({"ready": True, "version": sys.version.split()[0]})
    while True:
        if (eof or stale) and not children:
            os._exit(0)
        ready = dict(poller.poll())
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                code = _exit_code(status)
                if code is not None and pid in children:
                    children.discard(pid)
                    send({"pid": pid, "exit": code})
        if eof or ctrl_fd not in ready:
            continue
        data, ancillary, flags, _ = ctrl.recvmsg(1 << 18, socket.CMSG_SPACE(4 * 8))
        if flags & socket.MSG_CTRUNC:
            _fatal("file descriptors were truncated")
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds.extend(
                    int.from_bytes(payload[i : i + 4], sys.byteorder)
                    for i in range(0, usable, 4)
                )
        if not data:
            eof = True
            poller.unregister(ctrl_fd)
            for fd in fds:
                os.close(fd)
            del fds[:]
            continue
        buf += data
        while len(buf) >= 4:
            size = int.from_bytes(buf[:4], "big")
            if size > _MAX_FRAME:
                _fatal("oversized frame")
            if len(buf) < 4 + size:
                break
            request = json.loads(bytes(buf[4 : 4 + size]).decode())
            del buf[: 4 + size]
            if not fds:
                _fatal("request without a file descriptor")
            out_fd = fds.pop(0)
            ident = request["id"]
            if stale or _site_state(dirs) != site_state:
                stale = True
                os.close(out_fd)
                send({"id": ident, "stale": True})
                continue
            if _declares_encoding(request["code"]):
                os.close(out_fd)
                send({"id": ident, "cold": True})
                continue
            try:
                os.chdir(request["cwd"])
                go_r, go_w = os.pipe()
            except OSError as err:
                os.close(out_fd)
                send({"id": ident, "error": str(err)})
                continue
            try:
                pid = os.fork()
            except OSError as err:
                for fd in (out_fd, go_r, go_w):
                    os.close(fd)
                send({"id": ident, "error": "fork: %s" % err})
                continue
            if pid == 0:
                # The child: drop everything of the server's, then wait for the go-ahead, so
                # the code never runs unless the agent has been told the pid.
                try:
                    os.setpgid(0, 0)
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    ctrl.close()
                    for fd in [wake_r, wake_w, go_w] + fds:
                        os.close(fd)
                    os.dup2(out_fd, 1)
                    os.dup2(out_fd, 2)
                    os.close(out_fd)
                    go = os.read(go_r, 1)
                    os.close(go_r)
                except BaseException:
                    os._exit(127)
                if go != b"g":
                    os._exit(127)
                return request
            os.close(out_fd)
            os.close(go_r)
            try:
                os.setpgid(pid, pid)  # also done by the child: whichever runs first
            except OSError:
                pass
            children.add(pid)
            send({"id": ident, "pid": pid})
            os.write(go_w, b"g")
            os.close(go_w)


def _forget_imports():
    """Puts sys.modules and sys.path_importer_cache back to their start-up state, and makes
    the path finders list their directories afresh."""
    for name in [n for n in sys.modules if n not in _BASELINE]:
        del sys.modules[name]
    for path in [p for p in sys.path_importer_cache if p not in _BASE_FINDERS]:
        del sys.path_importer_cache[path]
    for finder in sys.path_importer_cache.values():
        invalidate = getattr(finder, "invalidate_caches", None)
        if invalidate is not None:
            invalidate()


def _prepare(request):
    """In the child: makes the process look like a fresh `python3 -u - <argv..>`."""
    argv = request["argv"]
    sys.argv = ["-"] + argv
    if hasattr(sys, "orig_argv"):
        sys.orig_argv = sys.orig_argv[:1] + ["-u", "-"] + argv
    for key, value in request["env"].items():
        os.environ[key] = value
    _forget_imports()  # normally done already, by the server before its loop
    finder = _CHARTS.get("FINDER")
    if finder is not None:
        sys.meta_path.insert(0, finder)
    main = type(sys)("__main__")
    namespace = main.__dict__
    namespace["__loader__"] = _LOADER
    namespace["__annotations__"] = {}
    namespace["__builtins__"] = sys.modules["builtins"]
    namespace["__file__"] = "<stdin>"
    namespace["__cached__"] = None
    sys.modules["__main__"] = main
    return request["code"].encode(), namespace


def _user_traceback(tb):
    """`tb` without this script's frames: what the same error shows in `python3 -`."""
    while tb is not None and tb.tb_frame.f_globals is _SERVER:
        tb = tb.tb_next
    return tb


def _write_stderr(text):
    stream = getattr(sys, "stderr", None)
    try:
        if stream is None:
            os.write(2, text.encode())
        else:
            stream.write(text)
    except Exception:
        pass


def _uncaught(error):
    """Reports an exception that ended the code like CPython's `PyErr_Print` does; returns the
    exit status."""
    if isinstance(error, SystemExit):
        try:
            value = error.code
        except AttributeError:
            value = error
        if value is None:
            return 0
        if isinstance(value, int):
            return value & 0xFF if -(1 << 63) <= value < (1 << 63) else 255
        _write_stderr(str(value))
        _write_stderr("\n")
        return 1
    tb = _user_traceback(error.__traceback__)
    error.__traceback__ = tb
    sys.last_type, sys.last_value, sys.last_traceback = type(error), error, tb
    if hasattr(sys, "last_exc"):
        sys.last_exc = error
    hook = getattr(sys, "excepthook", None)
    try:
        if hook is None:
            _write_stderr("sys.excepthook is missing\n")
            sys.__excepthook__(type(error), error, tb)
        else:
            hook(type(error), error, tb)
    except SystemExit as exit_:
        return _uncaught(exit_)
    except BaseException as hook_error:
        _write_stderr("Error in sys.excepthook:\n")
        sys.__excepthook__(type(hook_error), hook_error, hook_error.__traceback__)
        _write_stderr("\nOriginal exception was:\n")
        sys.__excepthook__(type(error), error, tb)
    return 1


def _flush_std_files():
    ok = True
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name, None)
        if stream is None or getattr(stream, "closed", False):
            continue
        try:
            stream.flush()
        except Exception:
            ok = False
    return ok


def _flush_files(names):
    """Flushes files left open in the globals of modules `names`. A fresh interpreter usually
    gets their data out when it drops them, but loses it if the collector happens to finalize
    the raw file before its buffer; make the usual case happen every time."""
    for name in names:
        for value in list(getattr(sys.modules[name], "__dict__", {}).values()):
            if type(value) in _BUFFERED:
                try:
                    if not value.closed:
                        value.flush()
                except Exception:
                    pass


def _release_run():
    """Lets go of `__main__` and the modules the run imported the way interpreter shutdown
    does: out of sys.modules, collect (finalizers still see their globals), then clear the
    globals of any module something still holds, and collect again."""
    global _namespace
    _namespace = None
    names = [n for n in sys.modules if n not in _BASELINE or n == "__main__"]
    _flush_files(names)
    refs = []
    for name in names:
        module = sys.modules.pop(name)
        try:
            refs.append(_weakref.ref(module))
        except TypeError:
            pass
    module = None
    gc.collect()
    for ref in reversed(refs):
        namespace = getattr(ref(), "__dict__", None)
        if type(namespace) is not dict:
            continue
        # Like `_PyModule_ClearDict`: `_private` names first, then the rest.
        for private_first in (True, False):
            for key in list(namespace):
                if not isinstance(key, str) or key == "__builtins__":
                    continue
                if not private_first or (key[:1] == "_" and key[:2] != "__"):
                    namespace[key] = None
    gc.collect()


def _finish(status, sigint):
    """What `Py_FinalizeEx` does that can be observed, without tearing down the interpreter
    (which costs more than the fork saves): join threads, atexit, flush, then drop the run's
    objects so their finalizers (`__del__`, unclosed files) run; then exit."""
    threading = sys.modules.get("threading")
    if threading is not None and hasattr(threading, "_shutdown"):
        try:
            threading._shutdown()
        except BaseException:
            pass
    atexit = sys.modules.get("atexit")
    if atexit is not None:
        atexit._run_exitfuncs()
    ok = _flush_std_files()
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            delattr(sys, name)
    _release_run()
    ok = _flush_std_files() and ok
    status = status if ok else 120
    if sigint and sys.version_info >= (3, 8):
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        status = 128 + signal.SIGINT
    os._exit(status)


_SERVER = globals()
_code, _namespace = _prepare(_serve(int(sys.argv[1])))
try:
    exec(compile(_code, "<stdin>", "exec", dont_inherit=True), _namespace)
except BaseException as _error:
    _status = (_uncaught(_error), isinstance(_error, KeyboardInterrupt))
else:
    _status = (0, False)
_finish(*_status)
