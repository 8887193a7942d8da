// Engine: executions per second for a three-stage pipeline of noop steps (custom stages,
// one `type: noop` step each) with 4 ferry-delegate processes, and the engine's cost per
// step against a bare task dispatch measured in the same run.
//
// - executions/s: E executions started with concurrent POST /api/v1/pipelines/:name/executions;
//   time from the first POST to the last execution's finishedAt.
// - per step: E_SEQ executions one at a time on idle delegates; (finishedAt − createdAt) / 3
//   against a bare dispatch: R raw noop tasks one at a time (POST /api/v1/tasks),
//   finishedAt − queuedAt (both from the server's clock, ms; waiting reads the store
//   read-only so that polling does not load the server). Target: ≤ 2x.
// Skips (exit 0) with a line saying so while `ferry pipeline apply` is not available.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ferryBin, sleep, tmpDir } from './_lib.mjs';
import {
  BenchSkip, runBench, startFerry, delegateToken, startDelegate, waitConnected, openServerDb, until, stats, ms, int, ratio, trackDir,
} from './_ferry.mjs';

const E = Number(process.env.BENCH_ENGINE_EXECUTIONS ?? 200);
const E_SEQ = Number(process.env.BENCH_ENGINE_SEQUENTIAL ?? 30);
const R = Number(process.env.BENCH_ENGINE_BARE ?? 60);
const CONCURRENCY = Number(process.env.BENCH_ENGINE_POSTS ?? 16);
const WAIT_MS = Number(process.env.BENCH_ENGINE_WAIT_MS ?? 180_000);
const NAME = 'bench-noop';

const skipLine = (why) => `engine: skipped: pipelines not available yet (${why})`;
// before anything started: print and leave; inside runBench: BenchSkip (stops what was started)
const skip = (why) => { throw new BenchSkip(skipLine(why)); };

const help = spawnSync(process.execPath, [ferryBin, 'pipeline', 'apply', '--help'], { encoding: 'utf8', timeout: 30_000 });
if (help.status !== 0) { console.log(skipLine(`\`ferry pipeline apply\` ${(help.stderr || help.stdout).trim().split('\n')[0] || `exited ${help.status}`}`)); process.exit(0); }

const pipelineYaml = `pipeline: ${NAME}
stages:
${['one', 'two', 'three'].map((id) => `  - id: ${id}
    type: custom
    delegateSelectors: [engine]
    steps:
      - { id: ${id}-noop, type: noop }`).join('\n')}
`;

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
  // Waiting reads the server's SQLite file read-only (as the other benchmarks do), so that
  // polling adds no load to the server; the figures are the server's own timestamps.
  const db = openServerDb(srv);
  const execRow = db.prepare('select status, created_at, finished_at from executions where id = ?');
  const taskRow = db.prepare('select status, queued_at, finished_at from tasks where id = ?');
  const stepRows = db.prepare('select queued_at, started_at, finished_at from tasks where execution_id = ?');
  const where = (d) => (d.stages ?? []).map((s) => `${s.id} ${s.status}${s.attempts?.length ? ` <${s.attempts.at(-1).status}, ${s.attempts.at(-1).operationStatus}>` : ''} [${(s.steps ?? []).map((st) => `${st.id} ${st.status}`).join(', ')}]`).join('; ');
  const finish = async (id, timeoutMs = 30_000) => {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const r = execRow.get(id);
      if (r?.finished_at != null) return r;
      if (Date.now() > end) {
        const d = await get(id).catch(() => null);
        throw new Error(`execution ${id} did not finish within ${timeoutMs / 1000} s: ${d ? `${d.status}; ${where(d)}` : 'no document'}`);
      }
      await sleep(2);
    }
  };

  // warm up
  for (let i = 0; i < 3; i++) {
    const { id } = await run();
    await finish(id);
    const d = await get(id);
    if (d.status !== 'Succeeded') throw new Error(`warm-up execution ended ${d.status}: ${where(d)}`);
  }

  // bare dispatch, one at a time
  const bare = [];
  for (let i = 0; i < R; i++) {
    const { id } = await srv.call('POST', '/api/v1/tasks', { spec: { kind: 'noop' }, selectors: ['engine'] });
    const task = await until(() => { const x = taskRow.get(id); return x?.finished_at != null ? x : null; }, { everyMs: 2, timeoutMs: 30_000, what: `task ${id}` });
    if (task.status !== 'succeeded') throw new Error(`bare task ${id} ended ${task.status}`);
    bare.push(Number(task.finished_at) - Number(task.queued_at));
    await sleep(5);
  }
  const b = stats(bare);

  // engine, one execution at a time
  const perStep = [];
  const stepDispatch = [];
  const gaps = [];
  for (let i = 0; i < E_SEQ; i++) {
    const { id } = await run();
    const r = await finish(id);
    perStep.push((Number(r.finished_at) - Number(r.created_at)) / 3);
    const steps = stepRows.all(id).sort((x, y) => Number(x.queued_at) - Number(y.queued_at));
    steps.forEach((st, j) => {
      stepDispatch.push(Number(st.finished_at) - Number(st.queued_at));
      gaps.push(Number(st.queued_at) - (j === 0 ? Number(r.created_at) : Number(steps[j - 1].finished_at)));
    });
    if (i === 0) { const d = await get(id); if (d.status !== 'Succeeded') throw new Error(`execution ${id} ended ${d.status}: ${where(d)}`); }
    await sleep(5);
  }
  const e = stats(perStep);
  const sd = stats(stepDispatch);
  const gp = stats(gaps);

  // executions per second
  const ids = [];
  const t0 = Date.now();
  let next = 0;
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => { while (next < E) { next++; ids.push((await run()).id); } }));
  const place = ids.map(() => '?').join(',');
  const progress = db.prepare(`select count(finished_at) as done, sum(finished_at is not null and status <> 'Succeeded') as bad, max(finished_at) as last from executions where id in (${place})`);
  let pr = { done: 0 };
  await until(() => { pr = progress.get(...ids); return pr.done >= E; }, { everyMs: 100, timeoutMs: WAIT_MS, what: `${E} executions` })
    .catch((err) => { throw new Error(`${err.message}: ${pr.done} finished`); });
  const failed = Number(pr.bad ?? 0);
  const last = Number(pr.last);
  const rate = (E * 1000) / (last - t0);

  console.log(`bare dispatch (raw noop task, queued → result stored, ${b.n} one at a time): p50 ${ms(b.p50, 1)} mean ${ms(b.mean, 1)}`);
  console.log(`engine, one execution at a time (${e.n}): per step (created → finished / 3) p50 ${ms(e.p50, 1)} mean ${ms(e.mean, 1)}; of which the step's task queued → result stored p50 ${ms(sd.p50, 1)} and the engine's gap before it (created or previous step finished → task queued) p50 ${ms(gp.p50, 1)}`);
  console.log(`engine: ${int(E)} executions of a 3-stage noop pipeline in ${((last - t0) / 1000).toFixed(2)} s = ${rate.toFixed(1)} executions/s (${(rate * 3).toFixed(0)} steps/s; 4 ferry-delegates × 16)${failed ? `; ${failed} did not succeed` : ''}`);
  const r = e.p50 / b.p50;
  console.log(`engine: ${rate.toFixed(1)} executions/s; per step ${ms(e.p50, 1)} vs bare dispatch ${ms(b.p50, 1)}; ratio ${ratio(e.p50, b.p50)}; target <= 2x: ${r <= 2 && !failed ? 'PASS' : 'MISS'}`);
});
