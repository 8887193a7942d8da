// Automatic rollback: a bad delegate version (its http handler misses a lazily loaded
// module; self-checks pass) is rolled out to ring0 with the DEFAULT ring settings
// (FERRY_RING_SOAK 10m, FERRY_RING_CHECK_INTERVAL 15s, FERRY_RING_MIN_SAMPLE 20,
// FERRY_RING_ALPHA 0.01). Steady traffic: every 500 ms one http and one shell task per
// account, two accounts in ring0 (bad version) and one in ring1 (good version).
// Figure: the time from the first failing task on the bad version to the automatic
// rollback (the ring history row written by `ferry`). Same-run reference: the time the
// traffic took to produce the minimum sample of failures (the floor any test with that
// minimum sample has). Also: until ring0's delegates are back on the good version.
// Target: < 2 minutes. The run is bounded (BENCH_AUTOROLLBACK_LIMIT_MS, default 5 min).
import { startServer, api, tmpDir, kill, sleep } from './_lib.mjs';
import { buildBundle, cli, startDelegate, stopDelegate, until, allOn } from './_rings.mjs';

const GOOD = 'bench-good-1.0.0';
const BAD = 'bench-bad-1.1.0';
const LIMIT_MS = Number(process.env.BENCH_AUTOROLLBACK_LIMIT_MS ?? 5 * 60_000);
const PERIOD_MS = Number(process.env.BENCH_AUTOROLLBACK_PERIOD_MS ?? 500);

const out = tmpDir('bundles');
const good = buildBundle(GOOD, out);
const bad = buildBundle(BAD, out, 'missing-lazy-http-module');
// default ring settings: nothing FERRY_RING_* is set
const srv = await startServer({ env: {} });
const ds = [];
const A = (m, r, b) => api(srv.url, srv.adminToken, m, r, b);
try {
  await cli(srv, ['release', 'publish', good]);
  await cli(srv, ['release', 'publish', bad]);
  const accounts = { acme: 'ring0', globex: 'ring0', later: 'ring1' };
  for (const [a, ring] of Object.entries(accounts)) {
    await cli(srv, ['account', 'create', a, '--ring', ring]);
    const tok = await A('POST', '/api/v1/tokens', { kind: 'delegate', name: `bench-${a}`, account: a });
    ds.push(startDelegate(srv, { token: tok.token, name: `${a}-1`, env: { FERRY_DELEGATE_CAPACITY: '4' } }));
  }
  for (const ring of ['ring0', 'ring1']) await cli(srv, ['ring', 'set', ring, '--version', GOOD]);
  const names = ds.map((d) => d.name);
  await until(srv, allOn(names, GOOD), { what: `delegates on ${GOOD}`, timeoutMs: 180_000 });

  const submitted = [];
  const submit = async (account, spec) => submitted.push((await A('POST', '/api/v1/tasks', { spec, account })).id);
  const round = async () => {
    for (const a of Object.keys(accounts)) {
      await submit(a, { kind: 'http', url: `${srv.url}/healthz` });
      await submit(a, { kind: 'shell', script: 'echo ok' });
    }
  };
  // the good version's record first
  for (let i = 0; i < 10; i++) { await round(); await sleep(PERIOD_MS); }

  const t0 = Date.now();
  await cli(srv, ['ring', 'rollout', BAD]);
  let rolledBack = null;
  const deadline = t0 + LIMIT_MS;
  while (Date.now() < deadline) {
    await round();
    const hist = await A('GET', '/api/v1/rings/ring0/history');
    rolledBack = hist.find((h) => h.by === 'ferry' && h.from === BAD);
    if (rolledBack) break;
    await sleep(PERIOD_MS);
  }
  if (!rolledBack) throw new Error(`no automatic rollback within ${LIMIT_MS} ms`);
  const rollbackAt = Date.parse(rolledBack.at);
  await until(srv, allOn(['acme-1', 'globex-1'], GOOD, rollbackAt), { what: `ring0 back on ${GOOD}`, timeoutMs: 180_000 });
  const backAt = Date.now();

  // when did the bad version's http tasks fail?
  const tasks = [];
  for (const id of submitted) tasks.push(await A('GET', `/api/v1/tasks/${id}`));
  const fails = tasks.filter((t) => t.delegateVersion === BAD && t.status === 'failed' && t.finishedAt).map((t) => Date.parse(t.finishedAt)).sort((a, b) => a - b);
  const badKinds = [...new Set(tasks.filter((t) => t.delegateVersion === BAD && t.status === 'failed').map((t) => t.kind))];
  const goodFails = tasks.filter((t) => t.delegateVersion === GOOD && t.status === 'failed').length;
  if (fails.length === 0) throw new Error('no task failed on the bad version');
  const ev = rolledBack.evidence ?? {};
  const minSample = ev.minSample ?? 20;
  const firstFail = fails[0];
  const sampleAt = fails[Math.min(minSample, fails.length) - 1];
  const figure = rollbackAt - firstFail;
  const floor = Math.max(1, sampleAt - firstFail);
  const s = (ms) => (ms / 1000).toFixed(1);
  console.log(`rollout of ${BAD} to ring0 at +0 s; first failing task at +${s(firstFail - t0)} s; ${minSample}th failure at +${s(sampleAt - t0)} s; automatic rollback at +${s(rollbackAt - t0)} s; ring0 back on ${GOOD} at +${s(backAt - t0)} s`);
  console.log(`evidence: kind ${ev.kind}, new ${ev.new?.failed}/${ev.new?.total} vs old ${ev.old?.failed}/${ev.old?.total}, p=${ev.pValue}; failed kinds on ${BAD}: ${badKinds.join(', ')}; failures on ${GOOD}: ${goodFails}`);
  console.log(`ring-autorollback: first failing task → automatic rollback ${s(figure)} s (default settings: check every 15s, min sample ${minSample}); reference (traffic to reach the min sample) ${s(floor)} s, ratio ${(figure / floor).toFixed(2)}x; target < 120 s: ${figure < 120_000 ? 'PASS' : 'MISS'}`);
} finally {
  await Promise.all(ds.map((d) => stopDelegate(d, 'SIGTERM', 15_000)));
  await kill(srv.proc, 'SIGTERM');
}
