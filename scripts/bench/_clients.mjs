// Simulated delegates in one process: N protocol clients (or bare ws clients with --bare).
// Each speaks the real protocol: hello, answers heartbeats, reconnects with exponential
// backoff and full jitter like ferry-delegate. Reports progress as JSON lines.
import WebSocket from 'ws';
import { encodeFrame, decodeServerFrame, PROTOCOL_VERSION } from '../../shared/dist/index.js';

const [url, countArg, token, mode = 'protocol'] = process.argv.slice(2);
const N = Number(countArg);
const base = Number(process.env.BENCH_BACKOFF_BASE ?? 500);
const cap = Number(process.env.BENCH_BACKOFF_CAP ?? 10_000);
const concurrency = Number(process.env.BENCH_CONNECT_CONCURRENCY ?? 200);
let connected = 0;
let refused = 0;
let welcomeAt = new Array(N).fill(0);
let disconnectedAt = 0;
const closeCodes = {};

function report(extra = {}) {
  process.stdout.write(`${JSON.stringify({ connected, refused, closeCodes, ...extra })}\n`);
}

function connect(i, attempt = 0) {
  return new Promise((resolve) => {
    const headers = token ? { authorization: `Bearer ${token}` } : {};
    const ws = new WebSocket(mode === 'bare' ? url : `${url.replace(/^http/, 'ws')}/api/v1/delegate/connect`, { headers, perMessageDeflate: false });
    let up = false;
    let hb = null;
    ws.on('unexpected-response', (_req, res) => { refused++; res.resume(); });
    ws.on('open', () => {
      if (mode === 'bare') { up = true; connected++; resolve(); return; }
      ws.send(encodeFrame({ type: 'hello', protocol: PROTOCOL_VERSION, delegateId: `bench-${i}`, name: `bench-${i}`, version: '0.0.0-bench', tags: ['bench'], capabilities: ['noop'], capacity: 1, running: [] }));
    });
    ws.on('message', (data) => {
      const r = decodeServerFrame(data);
      if (!r.ok) return;
      if (r.frame.type === 'welcome') {
        up = true; connected++; welcomeAt[i] = Date.now(); attempt = 0;
        hb = setInterval(() => ws.send(encodeFrame({ type: 'heartbeat', at: Date.now(), running: [], load: 0 })), r.frame.heartbeatMs);
        resolve();
      }
    });
    const retry = (code) => {
      if (hb) clearInterval(hb);
      if (up) { connected--; up = false; if (!disconnectedAt) disconnectedAt = Date.now(); }
      closeCodes[code] = (closeCodes[code] ?? 0) + 1;
      const delay = Math.random() * Math.min(cap, base * 2 ** attempt);
      setTimeout(() => connect(i, attempt + 1).then(() => undefined), delay);
      resolve();
    };
    ws.on('close', (code) => retry(code));
    ws.on('error', () => undefined);
  });
}

const t0 = Date.now();
let next = 0;
async function worker() { while (next < N) { const i = next++; await connect(i); } }
await Promise.all(Array.from({ length: Math.min(concurrency, N) }, worker));
const waitAll = async () => { while (connected < N) await new Promise((r) => setTimeout(r, 50)); };
await waitAll();
report({ phase: 'connected', ms: Date.now() - t0 });
setInterval(() => {
  report({ phase: 'tick' });
  if (disconnectedAt && connected === N) {
    const times = welcomeAt.map((t) => t - disconnectedAt).filter((x) => x > 0).sort((a, b) => a - b);
    report({ phase: 'reconnected', first: times[0], last: times[times.length - 1], p50: times[Math.floor(times.length / 2)], disconnectedAt });
    disconnectedAt = 0;
  }
}, 250);
