// The BullMQ side of `cargo xtask bench --peer bullmq`. xtask writes this
// file as `bench.mjs` into the temporary folder where bullmq is installed
// and runs it twice per run, with the same arguments as the exo side:
//
//   node bench.mjs prefill PORT TASKS KIND
//     Adds TASKS jobs to the queue `bench` with `Queue.addBulk` (in chunks
//     of 1000), then exits.
//
//   node bench.mjs work PORT TASKS CONCURRENCY KIND
//     Builds one `Worker` with `autorun: false`, waits until its connection
//     is ready and prints `{"ready":true}`. On the first line read from
//     stdin it starts consuming. When TASKS jobs have completed or failed it
//     prints `{"done":true,...}` with the first processor start and the last
//     completion (milliseconds since the epoch), then closes the worker on
//     the next stdin line (or when stdin ends) and exits.
//
// A no-op job returns at once. An echo job publishes 10 progress updates,
// one per word, each awaited in turn: `job.updateProgress` stores the
// progress in the job hash and appends a `progress` event to the queue's
// event stream, which is BullMQ's nearest equivalent of exo's task events.
// Jobs are removed when they complete or fail, so Redis memory stays flat.

import { createInterface } from 'node:readline';
import { Queue, Worker } from 'bullmq';

const [mode, portText, tasksText, ...rest] = process.argv.slice(2);
const connection = { host: '127.0.0.1', port: Number(portText) };
const tasks = Number(tasksText);
const queueName = 'bench';
const echoWords = 'one two three four five six seven eight nine ten'.split(' ');

function now() {
  return performance.timeOrigin + performance.now();
}

async function prefill(kind) {
  const queue = new Queue(queueName, { connection });
  const options = { removeOnComplete: true, removeOnFail: true };
  for (let start = 0; start < tasks; start += 1000) {
    const jobs = [];
    for (let index = start; index < Math.min(start + 1000, tasks); index += 1) {
      const input = kind === 'echo' ? echoWords.join(' ') : `task ${index}`;
      jobs.push({ name: kind, data: { input }, opts: options });
    }
    await queue.addBulk(jobs);
  }
  await queue.close();
}

async function work(concurrency, kind) {
  let firstStart = 0;
  let lastEnd = 0;
  let completed = 0;
  let failed = 0;
  const processor = async (job) => {
    if (firstStart === 0) {
      firstStart = now();
    }
    if (kind === 'echo') {
      for (const word of job.data.input.split(' ')) {
        await job.updateProgress({ type: 'text', text: word });
      }
    }
    return null;
  };
  const worker = new Worker(queueName, processor, {
    connection,
    concurrency,
    autorun: false,
  });
  const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  let finished;
  const done = new Promise((resolve) => {
    finished = resolve;
  });
  const settle = () => {
    lastEnd = now();
    if (completed + failed === tasks) {
      finished();
    }
  };
  worker.on('completed', () => {
    completed += 1;
    settle();
  });
  worker.on('failed', () => {
    failed += 1;
    settle();
  });
  worker.on('error', (error) => console.error(`worker error: ${error}`));
  await worker.waitUntilReady();
  console.log(JSON.stringify({ ready: true }));
  await lines.next();
  const running = worker.run();
  await done;
  console.log(
    JSON.stringify({ done: true, completed, failed, first_start_ms: firstStart, last_end_ms: lastEnd }),
  );
  await lines.next();
  await worker.close();
  await running;
}

if (mode === 'prefill') {
  await prefill(rest[0]);
} else if (mode === 'work') {
  await work(Number(rest[0]), rest[1]);
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
process.exit(0);
