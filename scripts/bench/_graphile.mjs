// graphile-worker baselines, run as a child process against the private PostgreSQL of
// _pg.mjs (default durability). Prints one JSON line with the figures.
//
//   node _graphile.mjs latency URL N      add → start latency of N sequential jobs on an idle
//                                         worker; adder and worker in this process, one clock
//   node _graphile.mjs throughput URL N   N no-op jobs queued in bulk (as graphile-worker's own
//                                         perfTest does), then one worker (concurrency 8)
//                                         drains them; time from run() to the jobs table empty
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { run, makeWorkerUtils, Logger } from 'graphile-worker';

const [mode, url, nArg] = process.argv.slice(2);
const N = Number(nArg);
const concurrency = Number(process.env.BENCH_GRAPHILE_CONCURRENCY ?? 8);
const quiet = new Logger(() => (level, message) => { if (level === 'error') process.stderr.write(`graphile-worker: ${message}\n`); });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const deadline = Date.now() + Number(process.env.BENCH_GRAPHILE_TIMEOUT_MS ?? 180_000);
const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);

const utils = await makeWorkerUtils({ connectionString: url, logger: quiet });
await utils.migrate();

if (mode === 'latency') {
  let started = null;
  const runner = await run({
    connectionString: url, concurrency, noHandleSignals: true, pollInterval: 2000, logger: quiet,
    taskList: { noop: async () => { const t = performance.now(); if (started) { started(t); started = null; } } },
  });
  const lat = [];
  const cold = [];
  const warm = Number(process.env.BENCH_LATENCY_WARMUP ?? 50); // the same warm-up as Ferry's run
  for (let i = 0; i < N + warm && Date.now() < deadline; i++) {
    const p = new Promise((r) => { started = r; });
    const t0 = performance.now();
    await utils.addJob('noop', { i });
    const t1 = await p;
    if (i >= warm) lat.push(t1 - t0);
    else if (i < 1000) cold.push(t1 - t0);
    await sleep(2); // let the completion land: an idle worker for the next one
  }
  await runner.stop();
  await utils.release();
  out({ mode, n: lat.length, lat, cold });
} else if (mode === 'throughput') {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  await client.query('delete from graphile_worker._private_jobs');
  const q0 = performance.now();
  for (let i = 0; i < N; i += 5000) {
    await client.query(`select count(*) from graphile_worker.add_jobs(array(
      select row('noop', json_build_object('id', i), null, null, null, null, null, null)::graphile_worker.job_spec
      from generate_series($1::int, $2::int) i))`, [i + 1, Math.min(N, i + 5000)]);
  }
  const queueMs = performance.now() - q0;
  let done = 0;
  let allRan = null;
  const ran = new Promise((r) => { allRan = r; });
  const t0 = performance.now();
  const runner = await run({
    connectionString: url, concurrency, noHandleSignals: true, pollInterval: 2000, logger: quiet,
    taskList: { noop: async () => { if (++done === N) allRan(); } },
  });
  await Promise.race([ran, sleep(Math.max(1, deadline - Date.now()))]);
  // queued → result stored: a job is complete once its row is gone
  let left = -1;
  while (Date.now() < deadline) {
    left = Number((await client.query('select count(*)::int as n from graphile_worker._private_jobs')).rows[0].n);
    if (left === 0) break;
    await sleep(5);
  }
  const ms = performance.now() - t0;
  await runner.stop();
  await client.end();
  await utils.release();
  out({ mode, n: N, done, left, ms, queueMs, perSec: ((N - Math.max(0, left)) * 1000) / ms, concurrency });
} else {
  throw new Error(`unknown mode ${mode}`);
}
process.exit(0);
