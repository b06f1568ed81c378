"""RESP over a socket, with the standard library only: what the scripts
that stand in for the Python reference share."""

import socket
from urllib.parse import unquote, urlparse


def connect(url):
    """Connects to a `redis://` URL (password, user and database included);
    returns (socket, reader) for `command`."""
    parsed = urlparse(url)
    sock = socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379))
    reader = sock.makefile("rb")
    if parsed.password:
        user = unquote(parsed.username) if parsed.username else None
        if user:
            command(sock, reader, "AUTH", user, unquote(parsed.password))
        else:
            command(sock, reader, "AUTH", unquote(parsed.password))
    database = parsed.path.lstrip("/")
    if database:
        command(sock, reader, "SELECT", database)

    return sock, reader


def command(sock, reader, *args):
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    sock.sendall(b"".join(parts))
    return read_reply(reader)


def read_reply(reader):
    line = reader.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = reader.read(size + 2)[:-2]
        return data.decode()
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [read_reply(reader) for _ in range(size)]
    raise RuntimeError("unexpected reply %r" % line)
