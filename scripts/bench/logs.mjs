// Log throughput and live-tail latency, end to end, with 4 real ferry-delegate processes.
//
// Throughput: shell tasks each print LINES numbered lines of 80 bytes (awk), spread over
// the 4 delegates; lines per second from the first submit to the last result stored (a
// result is stored only after the chunks before it, in the same group commit order), with
// every line read back from the store afterwards and checked: all there, in order, once.
// Durable = the server acknowledged it after its commit and the WAL's sync (SQLite WAL).
//
// Tail latency: there is no live-tail stream for raw tasks (the SSE follow is on
// execution logs), so the benchmark measures what a reader of GET /api/v1/tasks/:id/logs
// sees: a shell task prints a line every 20 ms carrying the wall-clock time it was printed
// (date +%s%N), and the benchmark polls that route every POLL ms; latency = time the line
// was first returned − time it was printed (includes up to one poll interval). Measured
// three ways: while the delegates carry the target rate (8 paced tasks printing 100,000
// lines/s together, BENCH_LOG_TARGET_RATE) — the figure the target applies to; on an idle
// system; and, for information, during the throughput run, which saturates the pipeline
// (every queue is full there, so that tail shows the worst case, not the target case).
//
// Baseline in the same run: raw better-sqlite3 inserts of the same rows (JSON line arrays
// of the same chunk size as the server stored) in one process, WAL, synchronous=FULL,
// 8 chunks per commit. The ratio shows what the whole pipeline costs over the bare store.
// Targets: >= 100,000 lines/s durable; tail p99 < 100 ms.
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { sleep, tmpDir } from './_lib.mjs';
import {
  runBench, startFerry, delegateToken, startDelegate, waitConnected, openServerDb, until, stats, ms, int, ratio,
  wallNow, treeCpuMs, BetterSqlite3, trackDir,
} from './_ferry.mjs';

const TASKS = Number(process.env.BENCH_LOG_TASKS ?? 8);
const LINES = Number(process.env.BENCH_LOG_LINES ?? 100_000);
const DELEGATES = 4;
const CAPACITY = Number(process.env.BENCH_LOG_CAPACITY ?? 4);
const TAIL_LINES = Number(process.env.BENCH_TAIL_LINES ?? 250);
const POLL = Number(process.env.BENCH_TAIL_POLL_MS ?? 10);
const WAIT_MS = Number(process.env.BENCH_LOG_WAIT_MS ?? 180_000);
/** the target rate: the tail is also measured while the delegates carry this many lines/s */
const TARGET_RATE = Number(process.env.BENCH_LOG_TARGET_RATE ?? 100_000);
const PACED_SECONDS = Number(process.env.BENCH_LOG_PACED_SECONDS ?? 5);

const FILLER = 'x'.repeat(71); // "%08d " + 71 = 80 bytes before the newline
const bulkScript = (n) => `awk 'BEGIN { for (i = 1; i <= ${n}; i++) printf "%08d %s\\n", i, "${FILLER}" }'`;
/** n numbered lines of 80 bytes at `rate` lines/s (perl, core modules only), flushed every 1/100 s. */
const pacedScript = (n, rate) => `perl -MTime::HiRes=time,sleep -e '$f = "x" x 71; $t0 = time; for $i (1..${n}) { printf "%08d %s\\n", $i, $f; if ($i % ${Math.max(1, Math.round(rate / 100))} == 0) { STDOUT->flush(); $d = $t0 + $i / ${rate} - time; sleep($d) if $d > 0 } }'`;
const tailScript = (n) => `for i in $(seq 1 ${n}); do echo "$(date +%s%N) tail $i"; sleep 0.02; done`;

/** Polls a task's log until n tail lines were seen; resolves with [{printed, seen}] (wall ms) per line. */
async function tail(srv, id, n, deadline) {
  const seen = new Map(); // printed ns string -> {printed, seen}
  while (seen.size < n && Date.now() < deadline) {
    const res = await fetch(`${srv.url}/api/v1/tasks/${id}/logs`, { headers: { authorization: `Bearer ${srv.adminToken}` } });
    const text = await res.text();
    const at = wallNow();
    if (res.ok) {
      for (const line of text.split('\n')) {
        const m = /^(\d{19}) tail (\d+)$/.exec(line);
        if (!m || seen.has(m[1])) continue;
        seen.set(m[1], { printed: Number(BigInt(m[1]) / 1000n) / 1000, seen: at });
      }
    }
    await sleep(POLL);
  }
  if (seen.size < n) throw new Error(`tail: only ${seen.size}/${n} lines seen in time`);
  return seen;
}

const latency = (seen, pred = () => true) => stats([...seen.values()].filter(pred).map((x) => x.seen - x.printed));

/**
 * Where a tail line's time went: printed → read by the delegate (the line's t) → stored by
 * the server (its chunk's created_at, the group commit) → returned by the logs route.
 */
function breakdown(db, id, seenAt, pred = () => true) {
  const read = [];
  const store = [];
  const visible = [];
  for (const c of db.prepare('select lines, created_at from log_chunks where task_id = ? and attempt > 0').iterate(id)) {
    for (const l of JSON.parse(c.lines)) {
      const m = /^(\d{19}) tail /.exec(l[2]);
      const x = m && seenAt.get(m[1]);
      if (!x || !pred(x)) continue;
      read.push(l[1] - x.printed);
      store.push(Number(c.created_at) - l[1]);
      visible.push(x.seen - Number(c.created_at));
    }
  }
  const f = (x) => { const s = stats(x); return `p50 ${ms(s.p50, 0)} p99 ${ms(s.p99, 0)}`; };
  return `printed → read by the delegate ${f(read)}; → chunk stored by the server ${f(store)}; → returned by the route ${f(visible)} (ms clocks)`;
}

function rawSqliteBaseline(totalLines, linesPerChunk, chunksPerCommit = 8) {
  const dir = trackDir(tmpDir('raw'));
  const db = new BetterSqlite3(path.join(dir, 'raw.db'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec('create table log_chunks (task_id text not null, seq integer not null, attempt integer not null, lines text not null, line_count integer not null, created_at integer not null, primary key (task_id, seq))');
  const ins = db.prepare('insert into log_chunks values (?, ?, ?, ?, ?, ?) on conflict do nothing');
  const commit = db.transaction((rows) => { for (const r of rows) ins.run(r); });
  const t0 = performance.now();
  let line = 0;
  let seq = 0;
  let batch = [];
  while (line < totalLines) {
    const k = Math.min(linesPerChunk, totalLines - line);
    const now = Date.now();
    const lines = [];
    for (let i = 0; i < k; i++) lines.push([0, now, `${String(++line).padStart(8, '0')} ${FILLER}`]);
    batch.push([`raw-task-${seq % 8}`, ++seq, 1, JSON.stringify(lines), k, now]);
    if (batch.length >= chunksPerCommit) { commit(batch); batch = []; }
  }
  if (batch.length) commit(batch);
  const elapsed = performance.now() - t0;
  db.close();
  fs.rmSync(dir, { recursive: true, force: true });
  return (totalLines * 1000) / elapsed;
}

await runBench('logs', async () => {
  const srv = await startFerry();
  const token = await delegateToken(srv);
  const names = Array.from({ length: DELEGATES }, (_, i) => `log-${i + 1}`);
  const delegates = names.map((name) => startDelegate(srv, token, { name, capacity: CAPACITY, tags: ['logs'] }));
  await waitConnected(srv, names);
  const db = openServerDb(srv);
  const status = db.prepare('select status, finished_at, result from tasks where id = ?');
  const chunksOf = db.prepare('select seq, lines from log_chunks where task_id = ? and attempt > 0 order by seq');
  const submit = async (script) => (await srv.call('POST', '/api/v1/tasks', { spec: { kind: 'shell', script }, selectors: ['logs'] })).id;
  const finished = (ids) => ids.every((id) => ['succeeded', 'failed', 'canceled'].includes(status.get(id)?.status));

  // warm up: one small task per delegate
  const warm = await Promise.all(names.map(() => submit(bulkScript(1000))));
  await until(() => finished(warm), { timeoutMs: 60_000, what: 'the warm-up tasks' });

  // under load: the tail task first, then the bulk tasks
  const cpu0 = { server: treeCpuMs(srv.proc.pid), delegates: delegates.reduce((s, d) => s + treeCpuMs(d.proc.pid), 0) };
  const tailId = await submit(tailScript(TAIL_LINES));
  await sleep(100);
  const t0 = Date.now();
  const bulk = await Promise.all(Array.from({ length: TASKS }, () => submit(bulkScript(LINES))));
  const tailLoad = tail(srv, tailId, TAIL_LINES, Date.now() + WAIT_MS);
  await until(() => finished(bulk), { everyMs: 50, timeoutMs: WAIT_MS, what: `${TASKS} log tasks to finish` });
  const f1 = Math.max(...bulk.map((id) => Number(status.get(id).finished_at)));
  const elapsed = f1 - t0;
  const cpu = { server: treeCpuMs(srv.proc.pid) - cpu0.server, delegates: delegates.reduce((s, d) => s + treeCpuMs(d.proc.pid), 0) - cpu0.delegates };
  const tailSeen = await tailLoad;
  // under load: the lines printed while the bulk tasks ran
  const underLoad = (x) => x.printed >= t0 && x.printed <= f1;
  const loaded = latency(tailSeen, underLoad);

  // check every line: present, in order, once; and the chunk shape the server stored
  let stored = 0;
  let chunks = 0;
  for (const id of bulk) {
    const st = status.get(id);
    if (st.status !== 'succeeded') throw new Error(`log task ${id} ended ${st.status}: ${st.result}`);
    let expect = 1;
    for (const c of chunksOf.iterate(id)) {
      chunks++;
      for (const l of JSON.parse(c.lines)) {
        if (l[0] !== 0) continue;
        const n = Number(l[2].slice(0, 8));
        if (n !== expect || l[2].length !== 80) throw new Error(`task ${id}: line ${expect} expected, got ${JSON.stringify(l[2].slice(0, 20))}`);
        expect++;
        stored++;
      }
    }
    if (expect !== LINES + 1) throw new Error(`task ${id}: ${expect - 1}/${LINES} lines stored`);
  }
  const rate = (stored * 1000) / elapsed;
  console.log(`ferry: ${int(stored)} lines of 80 bytes (${TASKS} shell tasks × ${int(LINES)}, ${DELEGATES} ferry-delegates) durable in ${(elapsed / 1000).toFixed(2)} s = ${int(rate)} lines/s (${(rate * 81 / 1048576).toFixed(1)} MiB/s); all present, in order, once; ${int(chunks)} chunks, ${int(stored / chunks)} lines/chunk`);
  console.log(`  CPU during the run: server ${(cpu.server / elapsed * 100).toFixed(0)}% of a core, delegates (with their tasks) ${(cpu.delegates / elapsed * 100).toFixed(0)}%`);
  if (loaded.n < 20) throw new Error(`only ${loaded.n} tail lines were printed during the load: raise BENCH_LOG_LINES`);
  console.log(`  tail under load (GET /api/v1/tasks/:id/logs polled every ${POLL} ms; the ${loaded.n} lines printed while the bulk tasks ran): p50 ${ms(loaded.p50, 1)} p90 ${ms(loaded.p90, 1)} p99 ${ms(loaded.p99, 1)} max ${ms(loaded.max, 1)}`);
  console.log(`    ${breakdown(db, tailId, tailSeen, underLoad)}`);

  // the tail while the delegates carry the target rate (paced bulk tasks), the gate's figure
  const pacedTail = await submit(tailScript(Math.ceil((PACED_SECONDS * 1000) / 20) + 50));
  await sleep(100);
  const p0 = Date.now();
  const perTask = Math.round(TARGET_RATE / TASKS);
  const paced = await Promise.all(Array.from({ length: TASKS }, () => submit(pacedScript(perTask * PACED_SECONDS, perTask))));
  const pacedSeenP = tail(srv, pacedTail, Math.ceil((PACED_SECONDS * 1000) / 20) + 50, Date.now() + WAIT_MS);
  await until(() => finished(paced), { everyMs: 50, timeoutMs: WAIT_MS, what: 'the paced log tasks' });
  const p1 = Math.max(...paced.map((id) => Number(status.get(id).finished_at)));
  for (const id of paced) if (status.get(id).status !== 'succeeded') throw new Error(`paced log task ${id} ended ${status.get(id).status}: ${status.get(id).result}`);
  const pacedRate = (perTask * PACED_SECONDS * TASKS * 1000) / (p1 - p0);
  const pacedSeen = await pacedSeenP;
  const duringPaced = (x) => x.printed >= p0 + 200 && x.printed <= p1;
  const atTarget = latency(pacedSeen, duringPaced);
  console.log(`  tail at the target rate (${TASKS} tasks printing ${int(TARGET_RATE)} lines/s together for ${PACED_SECONDS} s, carried at ${int(pacedRate)} lines/s; ${atTarget.n} tail lines): p50 ${ms(atTarget.p50, 1)} p90 ${ms(atTarget.p90, 1)} p99 ${ms(atTarget.p99, 1)} max ${ms(atTarget.max, 1)}`);
  console.log(`    ${breakdown(db, pacedTail, pacedSeen, duringPaced)}`);

  // idle tail
  const idleId = await submit(tailScript(Math.min(100, TAIL_LINES)));
  const idleSeen = await tail(srv, idleId, Math.min(100, TAIL_LINES), Date.now() + 60_000);
  const idle = latency(idleSeen);
  console.log(`  tail idle (${idle.n} lines): p50 ${ms(idle.p50, 1)} p90 ${ms(idle.p90, 1)} p99 ${ms(idle.p99, 1)} max ${ms(idle.max, 1)}`);
  console.log(`    ${breakdown(db, idleId, idleSeen)}`);

  const raw = rawSqliteBaseline(stored, Math.max(1, Math.round(stored / chunks)));
  console.log(`baseline: raw better-sqlite3 inserts of the same rows (${int(stored / chunks)} lines/chunk, 8 chunks per commit, WAL, synchronous=FULL, one process): ${int(raw)} lines/s`);
  const pass = rate >= 100_000 && atTarget.p99 < 100 && idle.p99 < 100;
  console.log(`logs: ${int(rate)} lines/s durable end to end (4 delegates); raw SQLite ${int(raw)} lines/s; ratio ${ratio(rate, raw)}; tail p99 ${ms(atTarget.p99, 1)} at ${int(TARGET_RATE)} lines/s, ${ms(idle.p99, 1)} idle, ${ms(loaded.p99, 1)} at saturation (${int(rate)} lines/s); target >= 100,000 lines/s and tail p99 < 100 ms: ${pass ? 'PASS' : 'MISS'}`);
});
