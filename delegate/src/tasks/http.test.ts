import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { DEFAULT_LIMITS, type LogChunk, type TaskAssign, type TaskResult, type TaskSpec } from '@ferry/shared';
import { Spool } from '../spool/spool.js';
import { TaskRunner } from './runner.js';
import { chunkLimits } from './log-sink.js';
import { createHandlers, runSelfChecks } from './index.js';
import { silentLogger, spooledFrames, tempDir, waitFor } from '../testing.js';

let server: Server;
let base = '';
const requests: Array<{ method: string; url: string; body: string; auth?: string }> = [];

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => { body += d.toString(); });
    req.on('end', () => {
      requests.push({ method: req.method ?? '', url: req.url ?? '', body, auth: req.headers.authorization });
      const u = new URL(req.url ?? '/', 'http://x');
      if (u.pathname === '/ok') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('all good: build 1.4.2\nsecond line');
      } else if (u.pathname === '/created') {
        res.writeHead(201);
        res.end(`echo:${body}`);
      } else if (u.pathname === '/slow') {
        setTimeout(() => { res.writeHead(200); res.end('late'); }, 5000).unref();
      } else if (u.pathname === '/api/v1/query_range') {
        const q = u.searchParams.get('query') ?? '';
        res.writeHead(200, { 'content-type': 'application/json' });
        if (q.includes('bad')) {
          res.end(JSON.stringify({ status: 'error', errorType: 'bad_data', error: 'parse error' }));
          return;
        }
        const role = /role="([^"]*)"/.exec(q)?.[1] ?? '';
        const v = role === 'canary' ? ['0.2', 'NaN', '0.3'] : ['0.1', '0.1', '0.1'];
        res.end(JSON.stringify({ status: 'success', data: { resultType: 'matrix', result: [{ metric: { role }, values: v.map((x, i) => [1000 + i, x]) }] } }));
      } else {
        res.writeHead(503, 'Service Unavailable');
        res.end('down');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

describe('http, noop and verify handlers', () => {
  let tmp: ReturnType<typeof tempDir>;
  let spool: Spool;
  let runner: TaskRunner;
  let n = 0;

  beforeEach(async () => {
    tmp = tempDir();
    spool = new Spool({ dir: join(tmp.dir, 'spool'), maxBytes: 64 << 20 });
    await spool.open();
    runner = new TaskRunner({
      spool, handlers: createHandlers(), capabilities: new Set(['shell', 'noop', 'http', 'verify']), capacity: 4,
      stateDir: tmp.dir, killGraceMs: 500, chunkLimits: () => chunkLimits(DEFAULT_LIMITS, 20), logger: silentLogger(),
    });
  });
  afterEach(async () => {
    runner.cancelAll('test over');
    await runner.waitIdle(5000);
    await spool.close();
    tmp.cleanup();
  });

  async function run(spec: TaskSpec, extra: Partial<TaskAssign> = {}): Promise<{ result: TaskResult; lines: string[] }> {
    n += 1;
    const a: TaskAssign = { type: 'task.assign', taskId: `t-${n}`, attempt: 1, leaseMs: 1000, spec, env: {}, secrets: {}, ...extra };
    expect(runner.assign(a).accept).toBe(true);
    await waitFor(() => !runner.isRunning(a.taskId, 1), 20_000, 'task end');
    const t = spool.get(a.taskId, 1)!;
    await t.settled();
    const frames = spooledFrames(t);
    return {
      result: frames.at(-1) as TaskResult,
      lines: (frames.filter((f) => f.type === 'log.chunk') as LogChunk[]).flatMap((c) => c.lines.map((l) => l.l)),
    };
  }

  it('http: logs request, status and body; succeeds on 2xx and a matching body', async () => {
    const { result, lines } = await run({ kind: 'http', url: `${base}/ok`, expectBody: 'build \\d+\\.\\d+' });
    expect(result.status).toBe('Succeeded');
    expect(result.outputs).toEqual({ status: '200' });
    expect(lines[0]).toBe(`> GET ${base}/ok`);
    expect(lines[1]).toMatch(/^< 200 OK/);
    expect(lines.slice(2)).toEqual(['all good: build 1.4.2', 'second line']);
  });

  it('http: sends method, headers and body; masks secrets in what it logs', async () => {
    const { result, lines } = await run(
      { kind: 'http', url: `${base}/created`, method: 'POST', headers: { authorization: 'Bearer tok-123456' }, body: 'payload-with-tok-123456', expectStatus: [201] },
      { secrets: { TOKEN: 'tok-123456' } },
    );
    expect(result.status).toBe('Succeeded');
    const req = requests.find((r) => r.url === '/created')!;
    expect(req).toMatchObject({ method: 'POST', body: 'payload-with-tok-123456', auth: 'Bearer tok-123456' });
    expect(lines).toContain('echo:payload-with-***');
  });

  it('http: fails with StepFailed on an unexpected status, a body mismatch, or no server', async () => {
    const bad = await run({ kind: 'http', url: `${base}/down` });
    expect(bad.result.status).toBe('Failed');
    expect(bad.result.error).toMatchObject({ kind: 'StepFailed', message: 'status 503, expected 200-299' });
    const mismatch = await run({ kind: 'http', url: `${base}/ok`, expectBody: '^nope$' });
    expect(mismatch.result.error?.kind).toBe('StepFailed');
    expect(mismatch.result.error?.message).toMatch(/does not match/);
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', () => r()));
    const freePort = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    const refused = await run({ kind: 'http', url: `http://127.0.0.1:${freePort}/` });
    expect(refused.result.error?.kind).toBe('StepFailed');
    expect(refused.result.error?.message).toMatch(/ECONNREFUSED/);
  });

  it('http: a request slower than the task timeout fails with Timeout', async () => {
    const t0 = Date.now();
    const { result } = await run({ kind: 'http', url: `${base}/slow` }, { timeoutMs: 300 });
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(result.status).toBe('Failed');
    expect(result.error?.kind).toBe('Timeout');
  });

  it('noop: prints lines, can fail', async () => {
    const ok = await run({ kind: 'noop', lines: 2500 });
    expect(ok.result.status).toBe('Succeeded');
    expect(ok.lines).toHaveLength(2500);
    expect(ok.lines[2499]).toBe('noop line 2500');
    const no = await run({ kind: 'noop', fail: true });
    expect(no.result.status).toBe('Failed');
  });

  it('verify: collects one query_range per metric and role after the window', async () => {
    const t0 = Date.now();
    const { result, lines } = await run({
      kind: 'verify',
      source: { type: 'prometheus', url: base },
      metrics: [{ name: 'error-rate', query: 'rate(x{role="$role"}[1m])' }, { name: 'broken', query: 'bad(' }],
      roles: ['baseline', 'canary'],
      durationMs: 200,
      intervalMs: 15_000,
    });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(190);
    expect(result.status).toBe('Succeeded');
    const data = result.data as { metrics: Array<{ name: string; role: string; points: number[]; nulls: number; error?: string }> };
    expect(data.metrics.map((m) => [m.name, m.role, m.points])).toEqual([
      ['error-rate', 'baseline', [0.1, 0.1, 0.1]],
      ['error-rate', 'canary', [0.2, 0.3]],
      ['broken', 'baseline', []],
      ['broken', 'canary', []],
    ]);
    expect(data.metrics[1]!.nulls).toBe(1);
    expect(data.metrics[2]!.error).toMatch(/bad_data/);
    expect(lines.some((l) => l.startsWith('error-rate [canary]: 2 point(s)'))).toBe(true);
    const q = requests.filter((r) => r.url.startsWith('/api/v1/query_range')).map((r) => new URL(r.url, 'http://x').searchParams);
    expect(q[0]!.get('query')).toBe('rate(x{role="baseline"}[1m])');
    expect(q[0]!.get('step')).toBe('15');
  });

  it('verify: a bearer token named as a secret reaches Prometheus and never the log', async () => {
    requests.length = 0;
    const { result, lines } = await run({
      kind: 'verify', source: { type: 'prometheus', url: base, bearerTokenSecret: 'PROM_TOKEN' },
      metrics: [{ name: 'error-rate', query: 'rate(x{role="$role"}[1m])' }], roles: ['canary'], durationMs: 0, intervalMs: 1000,
    }, { secrets: { PROM_TOKEN: 'prom-s3cret-token' } });
    expect(result.status).toBe('Succeeded');
    const q = requests.filter((r) => r.url.startsWith('/api/v1/query_range'));
    expect(q.length).toBe(1);
    expect(q[0]!.auth).toBe('Bearer prom-s3cret-token');
    expect(lines.join('\n')).not.toContain('prom-s3cret-token');
  });

  it('verify: Prometheus unreachable fails with Verification', async () => {
    const { result } = await run({
      kind: 'verify', source: { type: 'prometheus', url: 'http://127.0.0.1:1' },
      metrics: [{ name: 'm', query: 'up' }], roles: ['canary'], durationMs: 0, intervalMs: 1000,
    });
    expect(result.status).toBe('Failed');
    expect(result.error?.kind).toBe('Verification');
  });

  it('self-checks pass for every capability', async () => {
    const report = await runSelfChecks(createHandlers());
    expect(report.failed).toEqual([]);
    expect([...report.capabilities].sort()).toEqual(['http', 'noop', 'shell', 'verify']);
  });
});
