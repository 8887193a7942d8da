// Reconnect storm: N simulated delegates (real protocol, full-jitter backoff as in
// ferry-delegate) connected; the server is killed -9 and restarted on the same port and
// data dir. Figures: time until all are connected again and its spread, peak server CPU
// and memory, and refused/crashed sessions (must be zero). Baseline in the same run:
// the time the same clients took to connect to a fresh server (cold start).
import { startServer, api, rss, cpuMs, sleep, kill, spawnHelper } from './_lib.mjs';

const N = Number(process.env.BENCH_STORM ?? 2000);
const srv = await startServer({ env: { FERRY_HEARTBEAT_INTERVAL: '5s', FERRY_MAX_FRAMES_PER_SECOND: '100' } });
const port = new URL(srv.url).port;
const tok = await api(srv.url, srv.adminToken, 'POST', '/api/v1/tokens', { kind: 'delegate', name: 'storm' });
const clients = spawnHelper('_clients.mjs', [srv.url, String(N), tok.token], { BENCH_BACKOFF_BASE: '250', BENCH_BACKOFF_CAP: '5000' });
const first = await clients.next((m) => m.phase === 'connected', 600_000);
await sleep(2000);

await kill(srv.proc, 'SIGKILL');
const killedAt = Date.now();
await sleep(1000);
const again = await startServer({ dataDir: srv.dataDir, port: Number(port), env: { FERRY_HEARTBEAT_INTERVAL: '5s', FERRY_MAX_FRAMES_PER_SECOND: '100' } });
const restartedAt = Date.now();
let peakRss = 0;
let peakCpu = 0;
let lastCpu = cpuMs(again.proc.pid);
let lastAt = Date.now();
let crashed = false;
let ending = false;
again.proc.on('exit', () => { if (!ending) crashed = true; });
const sampler = setInterval(() => {
  try {
    peakRss = Math.max(peakRss, rss(again.proc.pid));
    const c = cpuMs(again.proc.pid);
    const now = Date.now();
    peakCpu = Math.max(peakCpu, (c - lastCpu) / (now - lastAt));
    lastCpu = c;
    lastAt = now;
  } catch { /* exited */ }
}, 200);
const done = await clients.next((m) => m.phase === 'reconnected', 600_000);
clearInterval(sampler);
const tick = await clients.next((m) => m.phase === 'tick');
ending = true;
await kill(clients.proc);
await kill(again.proc, 'SIGTERM');

const allBack = done.disconnectedAt + done.last - restartedAt;
console.log(`cold start: ${N} delegates connected in ${first.ms} ms`);
console.log(`storm: server restarted ${restartedAt - killedAt} ms after kill -9; all ${N} back ${allBack} ms after restart; reconnect spread after the restart: first ${done.disconnectedAt + done.first - restartedAt} ms, median ${done.disconnectedAt + done.p50 - restartedAt} ms, last ${allBack} ms`);
console.log(`storm: peak server CPU ${(peakCpu * 100).toFixed(0)}% of one core, peak RSS ${(peakRss / 1048576).toFixed(0)} MiB; refused upgrades ${tick.refused}; server crashed: ${crashed ? 'YES' : 'no'}; close codes ${JSON.stringify(tick.closeCodes)}`);
console.log(`reconnect-storm: ${N} delegates back in ${(allBack / 1000).toFixed(1)} s after restart; baseline cold connect ${(first.ms / 1000).toFixed(1)} s; ratio ${(allBack / first.ms).toFixed(2)}x; refused ${tick.refused}, crashed ${crashed ? 1 : 0}: ${tick.refused === 0 && !crashed ? 'PASS' : 'MISS'}`);
process.exit(0);
