#!/usr/bin/env python3
"""A chatty child for the log-throughput bench (stdlib only).

Run as a node under any supervisor: it writes CHATTY_BYTES bytes of identical fixed-length
lines (CHATTY_LINE bytes each, newline included) to stdout as fast as the reader takes them,
then one `CHATTY-END <lines>` line, and exits 0.

It starts writing only when the bench opens and closes the write end of the FIFO named by
CHATTY_FIFO, so process start-up is not part of the timing. Given `--config FILE` (how the
dwbase supervisor starts a node), it answers GET /readyz with 200 on the config's
`listen` address so that `dwbase deploy` sees it ready; it never writes anything else.
"""

import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

END_MARK = b"CHATTY-END "
CHUNK = 1 << 20


def payload_line(line_len):
    """The one line written over and over (`line_len` bytes, newline included)."""
    head = b"chatty log line "
    if line_len < len(head) + 2:
        raise ValueError(f"CHATTY_LINE must be at least {len(head) + 2}")
    return head + b"x" * (line_len - len(head) - 1) + b"\n"


def plan(total_bytes, line_len):
    """(lines, lines per chunk): the whole lines that fit in `total_bytes`."""
    lines = total_bytes // line_len
    return lines, max(1, CHUNK // line_len)


def listen_of(argv):
    """(host, port) of `listen = "H:P"` in the `--config` file, or None without one."""
    if "--config" not in argv:
        return None
    path = argv[argv.index("--config") + 1]
    with open(path, encoding="utf-8") as f:
        m = re.search(r'^\s*listen\s*=\s*"([^"]+)"', f.read(), re.M)
    if not m:
        return None
    host, port = m.group(1).rsplit(":", 1)
    return host, int(port)


class Ready(BaseHTTPRequestHandler):
    """200 to every GET, and no access log (it would land in the measured output)."""

    def do_GET(self):  # noqa: N802 (http.server naming)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def write_all(fd, buf):
    view = memoryview(buf)
    while view:
        view = view[os.write(fd, view):]


def main():
    total = int(os.environ["CHATTY_BYTES"])
    line_len = int(os.environ.get("CHATTY_LINE", "100"))
    fifo = os.environ["CHATTY_FIFO"]
    addr = listen_of(sys.argv[1:])
    if addr:
        server = ThreadingHTTPServer(addr, Ready)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    line = payload_line(line_len)
    lines, per_chunk = plan(total, line_len)
    chunk = line * per_chunk
    full, rest = divmod(lines, per_chunk)
    with open(fifo, "rb") as go:  # blocks until the bench opens the write end
        go.read()  # EOF once the bench closes it: start
    for _ in range(full):
        write_all(1, chunk)
    write_all(1, line * rest + END_MARK + b"%d\n" % lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
