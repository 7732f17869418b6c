#!/usr/bin/env python3
"""A tiny HTTP/1.1 backend that reads every request body to the end and throws it away, then
answers `200` with the number of body bytes it received (decimal, then a newline; `ok` for a
request without a body, i.e. with neither `Content-Length` nor chunked framing). Used by
benches/proxy-vs-nginx.sh (scenario `upload`) as the upstream the proxies stream a large
request body to: nothing is buffered or written to disk, and the answer proves the whole body
arrived.

- bodies with `Content-Length` or `Transfer-Encoding: chunked` (chunk extensions and trailers
  are skipped); none for requests that declare neither;
- `Expect: 100-continue` gets `100 Continue` first;
- keep-alive (HTTP/1.1 default, `Connection: close` honoured); one thread per connection.

Usage: upload-sink.py --port PORT [--host 127.0.0.1]. Python 3 standard library only.
"""

import argparse
import socket
import sys
import threading

BUF = 1 << 20


class Closed(Exception):
    pass


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.scratch = bytearray(BUF)
        self.view = memoryview(self.scratch)

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            raise Closed()
        self.buf += data

    def line(self, limit=65536):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                out = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return out
            if len(self.buf) > limit:
                raise ValueError("line too long")
            self._more()

    def discard(self, n):
        """Read and drop exactly n bytes; never reads past them."""
        take = min(n, len(self.buf))
        if take:
            del self.buf[:take]
            n -= take
        got = take
        while n > 0:
            k = self.sock.recv_into(self.view, min(n, BUF))
            if k == 0:
                raise Closed()
            n -= k
            got += k
        return got


def handle(sock):
    c = Conn(sock)
    try:
        while True:
            try:
                start = c.line()
            except Closed:
                return
            if start in (b"\r\n", b"\n"):
                continue
            headers = {}
            while True:
                h = c.line()
                if h in (b"\r\n", b"\n"):
                    break
                name, _, value = h.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            version = start.split()[-1].decode("latin-1") if start.split() else "HTTP/1.1"
            if headers.get("expect", "").lower() == "100-continue":
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            received = None
            if "chunked" in headers.get("transfer-encoding", "").lower():
                received = 0
                while True:
                    size_line = c.line()
                    size = int(size_line.split(b";")[0].strip(), 16)
                    if size == 0:
                        while c.line() not in (b"\r\n", b"\n"):  # trailers
                            pass
                        break
                    received += c.discard(size)
                    if c.line() not in (b"\r\n", b"\n"):
                        raise ValueError("chunk not followed by CRLF")
            elif "content-length" in headers:
                received = c.discard(int(headers["content-length"]))
            body = b"ok\n" if received is None else b"%d\n" % received
            close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s"
                         % (len(body), b"Connection: close\r\n" if close else b"", body))
            if close:
                return
    except (Closed, ConnectionError):
        return
    except ValueError as e:
        print("upload-sink: bad request: %s" % e, file=sys.stderr, flush=True)
        try:
            sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except OSError:
            pass
    finally:
        sock.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.host, args.port))
    srv.listen(128)
    while True:
        sock, _ = srv.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    main()
