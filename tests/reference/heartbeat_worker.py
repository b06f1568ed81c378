"""A worker of the Python reference, as the fleet sees it: it writes only
its heartbeat hash `{prefix}workers:{id}` (the fields of the captured
fixture `worker_heartbeat.hash.json`, rewritten every interval with a 30 s
TTL) and is a consumer of the queue's group under its worker id, as the
reference worker is once it reads the queue. It takes no task.

Standard library only; speaks RESP over a socket.

    python3 heartbeat_worker.py REDIS_URL PREFIX QUEUE WORKER_ID [INTERVAL]

Prints `ready` once the first heartbeat is written. On SIGTERM it deletes
its hash and exits, as the reference does when it stops.
"""

import signal
import socket
import sys
import time
from urllib.parse import unquote, urlparse


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


def main():
    url, prefix, queue, worker_id = sys.argv[1:5]
    interval = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
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

    group = queue + ":group"
    try:
        command(sock, reader, "XGROUP", "CREATE", queue, group, "0", "MKSTREAM")
    except RuntimeError as error:
        if "BUSYGROUP" not in str(error):
            raise
    command(sock, reader, "XGROUP", "CREATECONSUMER", queue, group, worker_id)

    key = prefix + "workers:" + worker_id
    started = time.time()

    def stop(*_):
        command(sock, reader, "DEL", key)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    first = True
    while True:
        command(
            sock, reader, "HSET", key,
            "status", "running",
            "tasks_processed", "0",
            "tasks_failed", "0",
            "current_task_id", "",
            "started_at", repr(started),
            "last_heartbeat", repr(time.time()),
            "concurrency", "4",
            "hostname", "vm",
        )
        command(sock, reader, "EXPIRE", key, 30)
        if first:
            print("ready", flush=True)
            first = False
        time.sleep(interval)


if __name__ == "__main__":
    main()
