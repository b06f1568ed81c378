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
import sys
import uuid

from resp import command, connect


class Redis:
    def __init__(self, url):
        self.sock, self.reader = connect(url)

    def call(self, *args):
        return command(self.sock, self.reader, *args)


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
