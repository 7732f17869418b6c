#!/usr/bin/env python3
"""Open N keep-alive connections to an HTTP/1.1 server, send one request on each, then hold
them all idle until SIGTERM/SIGINT. Used by benches/proxy-vs-nginx.sh (scenario `idle`) to
measure what an idle keep-alive connection costs a proxy in memory.

Every connection: TCP connect, (with --tls) a complete TLS handshake (no SNI, ALPN
http/1.1, certificate not verified), one `GET PATH` with `Connection: keep-alive`, the whole
response read (it must be a 2xx with a Content-Length or chunked body). Then it sits idle.
At most --concurrency connections are being set up at once, so the server's accept queue
does not overflow.

Output on stdout, one line each (the bench script waits for the second one):
  opening N connections to HOST:PORT (tls|plain)
  ready open=N failed=F closed_by_server=C setup_s=T   once every connection has its answer (or failed)
  closed open=N closed_by_server=C         on SIGTERM/SIGINT: how many were still open
(or `aborted during set-up: ...` if the signal came before every connection was set up).
Errors and the first few failure reasons go to stderr. Exit status 0 if every connection
was set up, 1 otherwise. Python 3 standard library only.
"""

import argparse
import errno
import selectors
import signal
import socket
import ssl
import sys
import time

CONNECTING, HANDSHAKE, SENDING, READING, IDLE = range(5)


class Conn:
    __slots__ = ("sock", "state", "out", "inbuf", "events")

    def __init__(self, sock, out):
        self.sock = sock
        self.state = CONNECTING
        self.out = out
        self.inbuf = bytearray()
        self.events = 0


def response_complete(buf):
    """True once buf holds one complete HTTP/1.1 response; raises ValueError if it is bad."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > 65536:
            raise ValueError("response head over 64 KiB")
        return False
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].startswith("2"):
        raise ValueError("unexpected status line %r" % head[0])
    length = None
    chunked = False
    for line in head[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "connection" and "close" in value.lower():
            raise ValueError("server answered Connection: close")
    body = buf[end + 4:]
    if chunked:
        return body.endswith(b"0\r\n\r\n")
    if length is None:
        raise ValueError("response without Content-Length or chunked body")
    return len(body) >= length


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tls", action="store_true", help="TLS handshake before the request")
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--path", default="/")
    ap.add_argument("--concurrency", type=int, default=256, help="connections being set up at once")
    ap.add_argument("--setup-timeout", type=float, default=120.0, help="seconds for all connections")
    args = ap.parse_args()

    ctx = None
    if args.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
    request = ("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: idle-conns.py\r\n"
               "Connection: keep-alive\r\n\r\n" % (args.path, args.host)).encode()

    stop = [False]

    def on_signal(_sig, _frm):
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    sel = selectors.DefaultSelector()
    conns = {}  # fd -> Conn
    started = ok = failed = 0
    in_setup = 0
    reasons = {}
    t0 = time.monotonic()
    print("opening %d connections to %s:%d (%s)" % (args.conns, args.host, args.port,
                                                     "tls" if args.tls else "plain"), flush=True)

    def want(c, events):
        if events != c.events:
            if c.events and events:
                sel.modify(c.sock, events, c)
            elif events:
                sel.register(c.sock, events, c)
            else:
                sel.unregister(c.sock)
            c.events = events

    def fail(c, why):
        nonlocal failed, in_setup
        failed += 1
        in_setup -= 1
        reasons[why] = reasons.get(why, 0) + 1
        want(c, 0)
        conns.pop(c.sock.fileno(), None)
        try:
            c.sock.close()
        except OSError:
            pass

    def start_one():
        nonlocal started, in_setup
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        started += 1
        in_setup += 1
        c = Conn(s, request)
        conns[s.fileno()] = c
        err = s.connect_ex((args.host, args.port))
        if err not in (0, errno.EINPROGRESS):
            fail(c, "connect: " + errno.errorcode.get(err, str(err)))
            return
        want(c, selectors.EVENT_WRITE)

    def after_connect(c):
        if args.tls:
            c.sock = ctx.wrap_socket(c.sock, do_handshake_on_connect=False)
            c.state = HANDSHAKE
            handshake(c)
        else:
            c.state = SENDING
            send(c)

    def handshake(c):
        try:
            c.sock.do_handshake()
        except ssl.SSLWantReadError:
            want(c, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            want(c, selectors.EVENT_WRITE)
            return
        except (ssl.SSLError, OSError) as e:
            fail(c, "tls: %s" % e)
            return
        c.state = SENDING
        send(c)

    def send(c):
        try:
            n = c.sock.send(c.out)
        except (ssl.SSLWantWriteError, BlockingIOError):
            want(c, selectors.EVENT_WRITE)
            return
        except ssl.SSLWantReadError:
            want(c, selectors.EVENT_READ)
            return
        except OSError as e:
            fail(c, "send: %s" % e)
            return
        c.out = c.out[n:]
        if c.out:
            want(c, selectors.EVENT_WRITE)
        else:
            c.state = READING
            want(c, selectors.EVENT_READ)

    def read(c):
        nonlocal ok, in_setup
        while True:
            try:
                data = c.sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                return
            except ssl.SSLWantWriteError:
                want(c, selectors.EVENT_WRITE)
                return
            except OSError as e:
                fail(c, "recv: %s" % e)
                return
            if not data:
                fail(c, "closed by server before the response was complete")
                return
            c.inbuf += data
            try:
                done = response_complete(c.inbuf)
            except ValueError as e:
                fail(c, str(e))
                return
            if done:
                c.state = IDLE
                c.inbuf = None
                c.out = None
                ok += 1
                in_setup -= 1
                # stay registered for reading: a close by the server is noticed
                want(c, selectors.EVENT_READ)
                return

    closed = 0

    def idle_readable(c):
        """An idle connection became readable: closed by the server, or a late TLS message."""
        nonlocal closed
        try:
            data = c.sock.recv(4096)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return
        except OSError:
            data = b""
        if not data:
            closed += 1
            want(c, 0)
            conns.pop(c.sock.fileno(), None)
            c.sock.close()

    deadline = t0 + args.setup_timeout
    while (ok + failed) < args.conns and not stop[0]:
        while started < args.conns and in_setup < args.concurrency:
            start_one()
        if time.monotonic() > deadline:
            for c in list(conns.values()):
                if c.state != IDLE:
                    fail(c, "setup timeout")
            break
        for key, _ev in sel.select(timeout=0.5):
            c = key.data
            if c.state == CONNECTING:
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(c, "connect: " + errno.errorcode.get(err, str(err)))
                else:
                    after_connect(c)
            elif c.state == HANDSHAKE:
                handshake(c)
            elif c.state == SENDING:
                send(c)
            elif c.state == READING:
                read(c)
            else:
                idle_readable(c)
    setup_s = time.monotonic() - t0
    for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
        print("idle-conns: %d failed: %s" % (n, why), file=sys.stderr, flush=True)
    if stop[0]:
        print("aborted during set-up: open=%d failed=%d" % (ok - closed, failed), flush=True)
        sys.exit(1)
    print("ready open=%d failed=%d closed_by_server=%d setup_s=%.2f" % (ok - closed, failed, closed, setup_s),
          flush=True)

    # Hold. An idle connection that becomes readable was closed (or written to) by the server.
    while not stop[0]:
        for key, _ev in sel.select(timeout=0.2):
            idle_readable(key.data)
    still = sum(1 for c in conns.values() if c.state == IDLE)
    print("closed open=%d closed_by_server=%d" % (still, closed), flush=True)
    for c in list(conns.values()):
        try:
            c.sock.close()
        except OSError:
            pass
    sys.exit(0 if failed == 0 else 1)


if __name__ == "__main__":
    main()
