// Connections: N protocol clients (simulated in one client process) held by one ferry
// server, against a bare `ws` server process holding the same number of idle
// connections. Figures: server memory per connection, and CPU spent on heartbeats over
// an idle window. Target: 10,000 connections; memory per connection within 2x of bare ws.
import { startServer, api, rss, cpuMs, sleep, kill, spawnHelper } from './_lib.mjs';

const N = Number(process.env.BENCH_CONNECTIONS ?? 10_000);
const windowMs = Number(process.env.BENCH_IDLE_WINDOW_MS ?? 20_000);
const heartbeat = process.env.BENCH_HEARTBEAT ?? '5s';

async function measure(label, serverPid, start) {
  if (global.gc) global.gc();
  await sleep(2000);
  const before = rss(serverPid);
  const clients = await start();
  const msg = await clients.next((m) => m.phase === 'connected', 600_000);
  await sleep(3000);
  const after = rss(serverPid);
  const c0 = cpuMs(serverPid);
  await sleep(windowMs);
  const cpu = cpuMs(serverPid) - c0;
  await kill(clients.proc);
  return { label, connectMs: msg.ms, perConn: (after - before) / N, cpuPerSec: cpu / (windowMs / 1000) };
}

// Baseline: bare ws.
const bare = spawnHelper('_bare-ws-server.mjs', []);
const { port } = await bare.next((m) => m.port);
const b = await measure('bare ws', bare.proc.pid, () => spawnHelper('_clients.mjs', [`ws://127.0.0.1:${port}`, String(N), '', 'bare']));
await kill(bare.proc);

// Ferry.
const srv = await startServer({ env: { FERRY_HEARTBEAT_INTERVAL: heartbeat, FERRY_MAX_FRAMES_PER_SECOND: '100' } });
const tok = await api(srv.url, srv.adminToken, 'POST', '/api/v1/tokens', { kind: 'delegate', name: 'bench' });
const f = await measure('ferry', srv.proc.pid, () => spawnHelper('_clients.mjs', [srv.url, String(N), tok.token]));
await kill(srv.proc, 'SIGTERM');

const kb = (x) => (x / 1024).toFixed(1);
console.log(`bare ws: ${N} idle connections in ${b.connectMs} ms, ${kb(b.perConn)} KiB/connection, idle CPU ${b.cpuPerSec.toFixed(1)} ms/s`);
console.log(`ferry:   ${N} delegate sessions in ${f.connectMs} ms, ${kb(f.perConn)} KiB/connection, heartbeat CPU ${f.cpuPerSec.toFixed(1)} ms/s (heartbeat ${heartbeat})`);
const ratio = f.perConn / b.perConn;
console.log(`connections: ${N} held; memory/connection ferry ${kb(f.perConn)} KiB vs bare ws ${kb(b.perConn)} KiB; ratio ${ratio.toFixed(2)}x; target <= 2x: ${ratio <= 2 ? 'PASS' : 'MISS'}`);
