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
import sys
import time

from resp import command, connect


def main():
    url, prefix, queue, worker_id = sys.argv[1:5]
    interval = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
    sock, reader = connect(url)
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
