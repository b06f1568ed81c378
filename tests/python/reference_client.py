"""A client that speaks the reference's wire format, with the standard library only.

It does what the reference's Python client does on the wire, so the tests can
check that exo and a reference client interoperate:

  submit   XADD {queue} * payload <TaskPayload JSON>   (the hash is the worker's to write)
  status   HGETALL {prefix}task:{id}, `result` decoded from JSON
  events   XRANGE {prefix}stream:{id} - +, each entry's `event` decoded from JSON

Usage:
  reference_client.py URL PREFIX QUEUE submit PAYLOAD_JSON   -> prints the task id
  reference_client.py URL PREFIX QUEUE status TASK_ID        -> prints the hash as JSON
  reference_client.py URL PREFIX QUEUE events TASK_ID        -> prints one event JSON per line
"""

import json
import socket
import sys
import uuid
from urllib.parse import urlparse


class Redis:
    def __init__(self, url):
        parsed = urlparse(url)
        self.sock = socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=10)
        self.file = self.sock.makefile("rb")
        if parsed.password:
            self.call("AUTH", *([parsed.username] if parsed.username else []), parsed.password)

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        return self.read()

    def read(self):
        line = self.file.readline()
        kind, rest = line[:1], line[1:-2]
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
            data = self.file.read(size + 2)[:-2]
            return data.decode()
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.read() for _ in range(size)]
        raise RuntimeError("unexpected reply %r" % line)


def main():
    url, prefix, queue, command, argument = sys.argv[1:6]
    redis = Redis(url)
    if command == "submit":
        payload = json.loads(argument)
        payload.setdefault("task_id", uuid.uuid4().hex)
        payload.setdefault("input", "")
        payload.setdefault("messages", [])
        payload.setdefault("model", None)
        payload.setdefault("detailed", False)
        payload.setdefault("metadata", {})
        payload.setdefault("created_at", 0.0)
        payload.setdefault("timeout_seconds", 300.0)
        redis.call("XADD", queue, "*", "payload", json.dumps(payload))
        print(payload["task_id"])
    elif command == "status":
        flat = redis.call("HGETALL", prefix + "task:" + argument) or []
        fields = dict(zip(flat[0::2], flat[1::2]))
        if fields.get("result"):
            fields["result"] = json.loads(fields["result"])
        print(json.dumps(fields))
    elif command == "events":
        for _entry_id, values in redis.call("XRANGE", prefix + "stream:" + argument, "-", "+") or []:
            entry = dict(zip(values[0::2], values[1::2]))
            print(json.dumps(json.loads(entry["event"])))
    else:
        raise SystemExit("unknown command " + command)


if __name__ == "__main__":
    main()
