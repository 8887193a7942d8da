/**
 * Self-test of the end-to-end support library against real sockets and processes:
 * the fault proxy, process tracking, the raw protocol client, PostgreSQL and Prometheus.
 */
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocketServer } from 'ws';
import { encodeFrame } from '@ferry/shared';
import { startFaultProxy } from './fault-proxy.js';
import { createDatabase, describeWithPg, dropDatabase, sql } from './postgres.js';
import { OutputBuffer, leftovers, sleep, spawnTracked, useProcessGuard, waitFor } from './processes.js';
import { connectProtocol, UpgradeRefusedError } from './protocol-client.js';
import { describeWithPrometheus, startPrometheus } from './prometheus.js';

useProcessGuard();

function listen<S extends Server | HttpServer>(server: S): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => {
    const a = server.address();
    resolve(typeof a === 'object' && a ? a.port : 0);
  }));
}

/** A line-less echo client: resolves with what came back for `text`. */
async function roundTrip(sock: Socket, text: string, timeout = 2_000): Promise<string> {
  let got = '';
  const onData = (d: Buffer) => { got += d.toString(); };
  sock.on('data', onData);
  sock.write(text);
  const end = Date.now() + timeout;
  while (got.length < text.length && Date.now() < end) await sleep(10);
  sock.off('data', onData);
  return got;
}

async function connectTo(port: number): Promise<Socket> {
  const sock = createConnection({ host: '127.0.0.1', port });
  await once(sock, 'connect');
  return sock;
}

describe('fault proxy', () => {
  let echo: Server;
  let echoPort: number;
  const serverSockets = new Set<Socket>();
  beforeAll(async () => {
    echo = createServer((s) => {
      serverSockets.add(s);
      s.on('close', () => serverSockets.delete(s));
      s.on('error', () => {});
      s.pipe(s);
    });
    echoPort = await listen(echo);
  });
  afterAll(async () => {
    for (const s of serverSockets) s.destroy();
    await new Promise<void>((r) => echo.close(() => r()));
  });

  it('forwards, cuts every live connection, then forwards again', async () => {
    const proxy = await startFaultProxy({ port: echoPort });
    try {
      const a = await connectTo(proxy.port);
      expect(await roundTrip(a, 'hello')).toBe('hello');
      await waitFor(() => serverSockets.size === 1, { timeout: 2_000, message: 'the echo server to see the connection' });
      expect(proxy.stats.active).toBe(1);

      const aClosed = once(a, 'close');
      expect(proxy.cutAll()).toBe(1);
      await aClosed;
      await waitFor(() => serverSockets.size === 0, { timeout: 2_000, message: 'the upstream side to be closed' });
      expect(proxy.stats).toMatchObject({ active: 0, cut: 1, accepted: 1 });

      const b = await connectTo(proxy.port);
      expect(await roundTrip(b, 'again')).toBe('again');
      expect(proxy.stats.accepted).toBe(2);
      b.destroy();
    } finally {
      await proxy.close();
    }
  });

  it('refuses new connections while blocked and keeps the live ones', async () => {
    const proxy = await startFaultProxy({ port: echoPort });
    try {
      const live = await connectTo(proxy.port);
      expect(await roundTrip(live, 'x')).toBe('x');
      proxy.setBlocked(true);
      const refused = createConnection({ host: '127.0.0.1', port: proxy.port });
      await new Promise<void>((r) => refused.on('error', () => {}).on('close', () => r()));
      expect(proxy.stats.refused).toBe(1);
      expect(await roundTrip(live, 'still')).toBe('still');
      proxy.setBlocked(false);
      const ok = await connectTo(proxy.port);
      expect(await roundTrip(ok, 'open')).toBe('open');
      live.destroy();
      ok.destroy();
    } finally {
      await proxy.close();
    }
  });

  it('stalls traffic while paused without closing, and delivers it on resume', async () => {
    const proxy = await startFaultProxy({ port: echoPort });
    try {
      const sock = await connectTo(proxy.port);
      expect(await roundTrip(sock, 'before')).toBe('before');
      proxy.pause();
      expect(await roundTrip(sock, 'held', 300)).toBe('');
      expect(sock.destroyed).toBe(false);
      let got = '';
      sock.on('data', (d: Buffer) => { got += d.toString(); });
      proxy.resume();
      await waitFor(() => got === 'held', { timeout: 2_000, message: 'the held bytes after resume' });
      sock.destroy();
    } finally {
      await proxy.close();
    }
  });
});

describe('process tracking', () => {
  it('buffers output lines and waits for a log line', async () => {
    const p = spawnTracked('sh', ['-c', 'echo one; echo two >&2; sleep 0.2; echo ready at 42'], { name: 'echoer' });
    const m = await p.waitForLog(/ready at (\d+)/, { timeout: 5_000 });
    expect(m[1]).toBe('42');
    expect(await p.exited).toEqual({ code: 0, signal: null });
    expect(p.output.text()).toContain('one');
    expect(p.output.text(0, 'stderr')).toBe('two');
    await expect(p.waitForLog(/never/, { timeout: 2_000 })).rejects.toThrow(/exited/);
    expect(await p.waitGone(2_000)).toBe(true);
  });

  it('finds a descendant that left the process group, and kills it', async () => {
    // the grandchild starts its own session, as a delegate's step may
    const p = spawnTracked('sh', ['-c', 'setsid sleep 60 & echo spawned; exit 0'], { name: 'escaper' });
    await p.waitForLog(/spawned/);
    await p.exited;
    await waitFor(() => p.members().length === 1, { timeout: 5_000, message: 'the escaped sleep to be found' });
    expect(leftovers().map((l) => l.proc)).toContain(p);
    await p.killHard();
    expect(p.members()).toEqual([]);
    p.untrack();
  });

  it('caps the ring buffer by bytes', () => {
    const buf = new OutputBuffer(100);
    for (let i = 0; i < 50; i++) buf.push('stdout', `line ${i}\n`);
    expect(buf.text().length).toBeLessThanOrEqual(100);
    expect(buf.lines().at(-1)?.text).toBe('line 49');
    expect(buf.mark()).toBe(50);
  });
});

describe('protocol client', () => {
  it('reports a refused upgrade with its status and JSON body', async () => {
    const http = createHttpServer((_req, res) => {
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { code: 'UNAUTHORIZED', message: 'bad token' } }));
    });
    const port = await listen(http);
    try {
      const err = await connectProtocol(`http://127.0.0.1:${port}`, 'nope').then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(UpgradeRefusedError);
      expect((err as UpgradeRefusedError).status).toBe(401);
      expect((err as UpgradeRefusedError).json()?.error.code).toBe('UNAUTHORIZED');
    } finally {
      http.closeAllConnections();
      await new Promise<void>((r) => http.close(() => r()));
    }
  });

  it('decodes server frames, keeps invalid ones apart, and reports the close', async () => {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await once(wss, 'listening');
    const addr = wss.address();
    const port = typeof addr === 'object' && addr ? addr.port : 0;
    let auth: string | undefined;
    wss.on('connection', (ws, req) => {
      auth = req.headers.authorization;
      ws.on('message', () => {
        ws.send(Buffer.from([0xc1])); // not msgpack
        ws.send(encodeFrame({ type: 'heartbeat', at: 7 }));
        ws.close(4003, 'bye');
      });
    });
    try {
      const c = await connectProtocol(`http://127.0.0.1:${port}`, 'tok');
      c.heartbeat();
      const hb = await c.next('heartbeat');
      expect(hb.at).toBe(7);
      expect(await c.closed).toEqual({ code: 4003, reason: 'bye' });
      expect(c.invalid).toHaveLength(1);
      expect(auth).toBe('Bearer tok');
      await expect(c.next('welcome', 500)).rejects.toThrow(/closed/);
    } finally {
      for (const ws of wss.clients) ws.terminate();
      await new Promise<void>((r) => wss.close(() => r()));
    }
  });
});

describeWithPg('postgres', () => {
  it('gives every test its own database', async () => {
    const a = await createDatabase();
    const b = await createDatabase({ prefix: 'other' });
    expect(a).not.toBe(b);
    expect((await sql(a, 'select current_database()')).trim()).toBe(new URL(a).pathname.slice(1));
    await sql(a, 'create table t (x int); insert into t values (1)');
    expect((await sql(b, "select count(*) from pg_tables where tablename = 't'")).trim()).toBe('0');
    await dropDatabase(a);
    await dropDatabase(b);
  });
});

describeWithPrometheus('prometheus', () => {
  it('scrapes a target', async () => {
    const app = createHttpServer((req, res) => {
      if (req.url === '/metrics') {
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
        res.end('# TYPE ferry_selftest gauge\nferry_selftest 42\n');
      } else {
        res.writeHead(404).end();
      }
    });
    const port = await listen(app);
    const prom = await startPrometheus({ targets: [`127.0.0.1:${port}`], interval: '1s' });
    try {
      await prom.waitForTargetsUp();
      const r = await waitFor(async () => {
        const q = await prom.query('ferry_selftest');
        return q.result[0]?.value?.[1];
      }, { timeout: 15_000, message: 'ferry_selftest in Prometheus' });
      expect(r).toBe('42');
    } finally {
      await prom.stop();
      app.closeAllConnections();
      await new Promise<void>((r) => app.close(() => r()));
    }
  });
});
