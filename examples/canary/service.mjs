#!/usr/bin/env node
// The canary example's service: a small HTTP API with a Prometheus /metrics endpoint and
// its own steady synthetic traffic, so that a baseline and a canary can be compared without
// an outside load generator. No dependencies.
//
//   VERSION=v2 PORT=9102 ROLE=canary STATE_DIR=/tmp/ferry-canary node service.mjs
//
// Environment:
//   VERSION      the artifact it runs (shown by GET /version and in the `version` label)
//   PORT         where it listens on 127.0.0.1 (0: any free port; it is written to $STATE_DIR/<name>.port)
//   ROLE         baseline | canary: the `role` label of every series; `auto` (blue/green):
//                baseline while $STATE_DIR/live names this instance's COLOR, else canary
//   COLOR        blue | green (blue/green only)
//   NAME         the instance's name for its files in STATE_DIR (default: ROLE or COLOR)
//   STATE_DIR    where the weight file (canary traffic share, in %) and the live colour are read
//   TRAFFIC_RPS  total synthetic requests per second shared by baseline and canary (default 50)
//   ERROR_RATE, EXTRA_LATENCY_MS  override the version's behaviour
//
// The version's behaviour: an artifact whose name contains "bad" is the broken build:
// 15% of its requests fail with 500 and each takes about 200 ms longer. Every other
// version serves every request in 110-125 ms without errors.
//
// Routes: GET /api (the work: 200 or 500), GET /health, GET /version, GET /metrics.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const env = process.env;
const version = env.VERSION || 'v1';
const roleMode = env.ROLE || 'baseline';
const color = env.COLOR || '';
const stateDir = env.STATE_DIR || '.';
const name = env.NAME || (roleMode === 'auto' ? color : roleMode);
const totalRps = Number(env.TRAFFIC_RPS || 50);
const bad = /bad/i.test(version);
const errorRate = env.ERROR_RATE !== undefined ? Number(env.ERROR_RATE) : bad ? 0.15 : 0;
const extraLatencyMs = env.EXTRA_LATENCY_MS !== undefined ? Number(env.EXTRA_LATENCY_MS) : bad ? 200 : 0;

const read = (file) => { try { return fs.readFileSync(path.join(stateDir, file), 'utf8').trim(); } catch { return ''; } };

/** The `role` label now: fixed, or (blue/green) baseline while this colour is live. */
function role() {
  if (roleMode !== 'auto') return roleMode;
  return read('live') === color ? 'baseline' : 'canary';
}

/** This instance's share of the traffic: the canary gets the weight, the baseline the rest. */
function share() {
  if (roleMode === 'auto') return 0.5;
  const w = Number(read('weight') || 0);
  const canaryShare = Math.min(100, Math.max(0, w)) / 100;
  return roleMode === 'canary' ? canaryShare : 1 - canaryShare;
}

// ---- metrics ------------------------------------------------------------------------------

const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
// counters start at 0 for both codes, so an error rate of 0 is a value, not a missing series
const requests = { 200: 0, 500: 0 };
const hist = { counts: BUCKETS.map(() => 0), sum: 0, count: 0 };

function observe(code, seconds) {
  requests[code] = (requests[code] ?? 0) + 1;
  hist.sum += seconds;
  hist.count += 1;
  for (let i = 0; i < BUCKETS.length; i++) if (seconds <= BUCKETS[i]) hist.counts[i] += 1;
}

function metricsText() {
  const r = role();
  const l = `role="${r}",version="${version}"`;
  const out = [
    '# HELP http_requests_total Requests served, by status code.',
    '# TYPE http_requests_total counter',
    ...Object.entries(requests).map(([code, n]) => `http_requests_total{${l},code="${code}"} ${n}`),
    '# HELP http_request_duration_seconds Time to serve a request.',
    '# TYPE http_request_duration_seconds histogram',
    ...BUCKETS.map((b, i) => `http_request_duration_seconds_bucket{${l},le="${b}"} ${hist.counts[i]}`),
    `http_request_duration_seconds_bucket{${l},le="+Inf"} ${hist.count}`,
    `http_request_duration_seconds_sum{${l}} ${hist.sum}`,
    `http_request_duration_seconds_count{${l}} ${hist.count}`,
    '# HELP canary_example_info The running version.',
    '# TYPE canary_example_info gauge',
    `canary_example_info{${l}} 1`,
  ];
  return `${out.join('\n')}\n`;
}

// ---- the work -----------------------------------------------------------------------------

let served = 0;
function work(res) {
  const started = process.hrtime.bigint();
  const n = ++served;
  // deterministic: every k-th request fails, latency cycles through 110..125 ms
  const fail = errorRate > 0 && n % Math.max(1, Math.round(1 / errorRate)) === 0;
  const delay = 110 + (n % 4) * 5 + extraLatencyMs;
  setTimeout(() => {
    const code = fail ? 500 : 200;
    observe(code, Number(process.hrtime.bigint() - started) / 1e9);
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(JSON.stringify(fail ? { error: 'internal error', version } : { ok: true, version }));
  }, delay);
}

const server = http.createServer((req, res) => {
  const url = (req.url || '/').split('?')[0];
  if (url === '/metrics') {
    res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
    res.end(metricsText());
  } else if (url === '/health') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ version, role: role(), healthy: true }));
  } else if (url === '/version') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`${version}\n`);
  } else if (url === '/api') {
    work(res);
  } else {
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found\n');
  }
});

// ---- synthetic traffic: requests to itself at this instance's share of TRAFFIC_RPS ----------

const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
let port = 0;
let credit = 0;
const TICK_MS = 100;
const ticker = setInterval(() => {
  if (!port) return;
  // at least 2 requests a second, so that a small canary still has something to measure
  credit += Math.max(2, totalRps * share()) * (TICK_MS / 1000);
  while (credit >= 1) {
    credit -= 1;
    const req = http.get({ host: '127.0.0.1', port, path: '/api', agent }, (res) => res.resume());
    req.on('error', () => {});
  }
}, TICK_MS);

server.listen(Number(env.PORT || 0), '127.0.0.1', () => {
  port = server.address().port;
  try { fs.writeFileSync(path.join(stateDir, `${name}.port`), String(port)); } catch { /* no state dir */ }
  console.log(`${version} (${name}) listening on http://127.0.0.1:${port}`);
});

const stop = () => {
  clearInterval(ticker);
  agent.destroy();
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
