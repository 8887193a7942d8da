// Ring rollback: 20 real delegate supervisors in ring0 run V2 (previous V1). Figure: the
// time from `ferry ring rollback ring0` (the CLI started) until every delegate is
// connected on V1 again in a normal session (downloaded earlier, so: drain, start V1 on
// probation, self-checks, connect, end probation, reconnect). Baseline in the same run:
// a plain restart of the same 20 delegates (SIGTERM, wait for exit, start again) until
// every one is connected again. Target: < 10 s on this 2-core machine.
import { startServer, api, tmpDir, kill } from './_lib.mjs';
import { buildBundle, cli, startDelegate, stopDelegate, until, allOn } from './_rings.mjs';

const N = Number(process.env.BENCH_RING_DELEGATES ?? 20);
const V1 = 'bench-1.0.0';
const V2 = 'bench-2.0.0';

const out = tmpDir('bundles');
const bundles = [buildBundle(V1, out), buildBundle(V2, out)];
const srv = await startServer({ env: { FERRY_HEARTBEAT_INTERVAL: '5s' } });
const ds = [];
try {
  for (const b of bundles) await cli(srv, ['release', 'publish', b, '--json']);
  const tok = await api(srv.url, srv.adminToken, 'POST', '/api/v1/tokens', { kind: 'delegate', name: 'bench-rings' });
  const names = Array.from({ length: N }, (_, i) => `ring-bench-${String(i).padStart(2, '0')}`);
  for (const name of names) ds.push(startDelegate(srv, { token: tok.token, name }));
  await until(srv, allOn(names, '0.1.0'), { what: `${N} delegates connected` });

  // V1, then V2: the delegates download both; V1 stays on disk as the previous version
  let t = Date.now();
  await cli(srv, ['ring', 'set', 'ring0', '--version', V1]);
  await until(srv, allOn(names, V1, t), { what: `${N} on ${V1}`, timeoutMs: 300_000 });
  const firstUpgradeMs = Date.now() - t;
  t = Date.now();
  await cli(srv, ['ring', 'set', 'ring0', '--version', V2]);
  await until(srv, allOn(names, V2, t), { what: `${N} on ${V2}`, timeoutMs: 300_000 });
  const secondUpgradeMs = Date.now() - t;

  // the figure
  const t0 = Date.now();
  await cli(srv, ['ring', 'rollback', 'ring0']);
  const done = await until(srv, allOn(names, V1, t0), { what: `${N} back on ${V1}` });
  const rollbackMs = done - t0;

  // the baseline: a plain restart of the same delegates (they run V1 from disk)
  const r0 = Date.now();
  await Promise.all(ds.map((d) => stopDelegate(d)));
  const again = ds.map((d) => startDelegate(srv, { token: tok.token, name: d.name, stateDir: d.stateDir }));
  ds.splice(0, ds.length, ...again);
  const restarted = await until(srv, allOn(names, V1, r0), { what: `${N} restarted` });
  const restartMs = restarted - r0;

  const s = (ms) => (ms / 1000).toFixed(2);
  console.log(`upgrades with download: 0.1.0 → ${V1} ${s(firstUpgradeMs)} s, ${V1} → ${V2} ${s(secondUpgradeMs)} s (${N} delegates)`);
  console.log(`ferry ring rollback ring0: ${N} delegates back on ${V1} (connected, probation passed) in ${s(rollbackMs)} s`);
  console.log(`plain restart (SIGTERM + start) of the same ${N} delegates: ${s(restartMs)} s`);
  const ratio = rollbackMs / restartMs;
  console.log(`ring-rollback: ${N} delegates in ${s(rollbackMs)} s; ratio to a plain restart ${ratio.toFixed(2)}x; target < 10 s: ${rollbackMs < 10_000 ? 'PASS' : 'MISS'}`);
} finally {
  await Promise.all(ds.map((d) => stopDelegate(d, 'SIGTERM', 15_000)));
  await kill(srv.proc, 'SIGTERM');
}
