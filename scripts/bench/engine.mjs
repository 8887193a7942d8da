// Engine: executions per second for a three-stage pipeline of noop steps (custom stages,
// one `type: noop` step each) with 4 ferry-delegate processes, and the engine's cost per
// step against a bare task dispatch measured in the same run.
//
// - executions/s: E executions started with concurrent POST /api/v1/pipelines/:name/executions;
//   time from the first POST to the last execution's finishedAt.
// - per step: E_SEQ executions one at a time on idle delegates; (finishedAt − createdAt) / 3
//   against a bare dispatch: R raw noop tasks one at a time (POST /api/v1/tasks),
//   finishedAt − queuedAt (both from the server's clock, ms). Target: ≤ 2x.
// Skips (exit 0) with a line saying so while `ferry pipeline apply` is not available.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ferryBin, sleep, tmpDir } from './_lib.mjs';
import {
  runBench, startFerry, delegateToken, startDelegate, waitConnected, until, stats, ms, int, ratio, trackDir,
} from './_ferry.mjs';

const E = Number(process.env.BENCH_ENGINE_EXECUTIONS ?? 200);
const E_SEQ = Number(process.env.BENCH_ENGINE_SEQUENTIAL ?? 30);
const R = Number(process.env.BENCH_ENGINE_BARE ?? 60);
const CONCURRENCY = Number(process.env.BENCH_ENGINE_POSTS ?? 16);
const WAIT_MS = Number(process.env.BENCH_ENGINE_WAIT_MS ?? 180_000);
const NAME = 'bench-noop';
const TERMINAL = new Set(['Succeeded', 'PartiallySucceeded', 'Failed', 'Aborted', 'Expired', 'Rejected', 'Superseded']);

const skip = (why) => { console.log(`engine: skipped: pipelines not available yet (${why})`); process.exit(0); };

const help = spawnSync(process.execPath, [ferryBin, 'pipeline', 'apply', '--help'], { encoding: 'utf8', timeout: 30_000 });
if (help.status !== 0) skip(`\`ferry pipeline apply\` ${(help.stderr || help.stdout).trim().split('\n')[0] || `exited ${help.status}`}`);

const pipelineYaml = `pipeline: ${NAME}
stages:
${['one', 'two', 'three'].map((id) => `  - id: ${id}
    type: custom
    delegateSelectors: [engine]
    steps:
      - { id: ${id}-noop, type: noop }`).join('\n')}
`;

const t = (iso) => (iso ? Date.parse(iso) : NaN);

await runBench('engine', async () => {
  const srv = await startFerry();
  const dir = trackDir(tmpDir('pipeline'));
  const file = path.join(dir, 'pipeline.yaml');
  fs.writeFileSync(file, pipelineYaml);
  const apply = spawnSync(process.execPath, [ferryBin, 'pipeline', 'apply', '-f', file], {
    encoding: 'utf8', timeout: 60_000, env: { ...process.env, FERRY_URL: srv.url, FERRY_TOKEN: srv.adminToken },
  });
  if (apply.status !== 0) skip(`\`ferry pipeline apply\` exited ${apply.status}: ${(apply.stderr || apply.stdout).trim().split('\n')[0]}`);

  const token = await delegateToken(srv);
  const names = ['eng-1', 'eng-2', 'eng-3', 'eng-4'];
  for (const name of names) startDelegate(srv, token, { name, capacity: 16, tags: ['engine'] });
  await waitConnected(srv, names);

  const run = async () => {
    try {
      return await srv.call('POST', `/api/v1/pipelines/${NAME}/executions`, { inputs: {}, artifact: 'bench' });
    } catch (err) {
      if (/: 404 /.test(err.message)) skip(`POST /api/v1/pipelines/:name/executions: ${err.message.slice(0, 200)}`);
      throw err;
    }
  };
  const get = (id) => srv.call('GET', `/api/v1/executions/${id}`);
  const where = (d) => (d.stages ?? []).map((s) => `${s.id} ${s.status}${s.attempts?.length ? ` <${s.attempts.at(-1).status}, ${s.attempts.at(-1).operationStatus}>` : ''} [${(s.steps ?? []).map((st) => `${st.id} ${st.status}`).join(', ')}]`).join('; ');
  const finish = async (id, { pollMs = 10, timeoutMs = 30_000 } = {}) => {
    let d = null;
    try {
      return await until(async () => { d = await get(id); return TERMINAL.has(d.status) ? d : null; }, { everyMs: pollMs, timeoutMs, what: `execution ${id}` });
    } catch (err) {
      throw new Error(`execution ${id} did not finish within ${timeoutMs / 1000} s: ${d ? `${d.status}; ${where(d)}` : err.message}`);
    }
  };

  // warm up
  for (let i = 0; i < 3; i++) {
    const d = await finish((await run()).id);
    if (d.status !== 'Succeeded') throw new Error(`warm-up execution ended ${d.status}: ${where(d)}`);
  }

  // bare dispatch, one at a time
  const bare = [];
  for (let i = 0; i < R; i++) {
    const { id } = await srv.call('POST', '/api/v1/tasks', { spec: { kind: 'noop' }, selectors: ['engine'] });
    const task = await until(async () => { const x = await srv.call('GET', `/api/v1/tasks/${id}`); return x.status === 'succeeded' ? x : null; }, { everyMs: 10, timeoutMs: 30_000, what: `task ${id}` });
    bare.push(t(task.finishedAt) - t(task.queuedAt));
    await sleep(5);
  }
  const b = stats(bare);

  // engine, one execution at a time
  const perStep = [];
  const stepDispatch = [];
  for (let i = 0; i < E_SEQ; i++) {
    const d = await finish((await run()).id);
    if (d.status !== 'Succeeded') throw new Error(`execution ${d.id} ended ${d.status}`);
    perStep.push((t(d.finishedAt) - t(d.createdAt)) / 3);
    for (const s of d.stages ?? []) for (const st of s.steps ?? []) stepDispatch.push(t(st.finishedAt) - t(st.queuedAt));
    await sleep(5);
  }
  const e = stats(perStep);
  const sd = stats(stepDispatch.filter(Number.isFinite));

  // executions per second
  const ids = [];
  const t0 = Date.now();
  let next = 0;
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => { while (next < E) { next++; ids.push((await run()).id); } }));
  const done = new Map();
  await until(async () => {
    const list = await srv.call('GET', `/api/v1/executions?pipeline=${NAME}`);
    for (const x of Array.isArray(list) ? list : list.items ?? []) if (TERMINAL.has(x.status)) done.set(x.id, x);
    const missing = ids.filter((id) => !done.has(id));
    if (missing.length && missing.length <= 20) for (const id of missing) { const x = await get(id); if (TERMINAL.has(x.status)) done.set(id, x); }
    return ids.every((id) => done.has(id));
  }, { everyMs: 250, timeoutMs: WAIT_MS, what: `${E} executions` });
  const ours = ids.map((id) => done.get(id));
  const failed = ours.filter((x) => x.status !== 'Succeeded').length;
  const last = Math.max(...ours.map((x) => t(x.finishedAt)));
  const rate = (E * 1000) / (last - t0);

  console.log(`bare dispatch (raw noop task, queued → result stored, ${b.n} one at a time): p50 ${ms(b.p50, 1)} mean ${ms(b.mean, 1)}`);
  console.log(`engine, one execution at a time (${e.n}): per step (created → finished / 3) p50 ${ms(e.p50, 1)} mean ${ms(e.mean, 1)}; a step's own task queued → finished p50 ${ms(sd.p50, 1)}; engine overhead per step ≈ ${ms(e.p50 - b.p50, 1)}`);
  console.log(`engine: ${int(E)} executions of a 3-stage noop pipeline in ${((last - t0) / 1000).toFixed(2)} s = ${rate.toFixed(1)} executions/s (${(rate * 3).toFixed(0)} steps/s; 4 ferry-delegates × 16)${failed ? `; ${failed} did not succeed` : ''}`);
  const r = e.p50 / b.p50;
  console.log(`engine: ${rate.toFixed(1)} executions/s; per step ${ms(e.p50, 1)} vs bare dispatch ${ms(b.p50, 1)}; ratio ${ratio(e.p50, b.p50)}; target <= 2x: ${r <= 2 && !failed ? 'PASS' : 'MISS'}`);
});
