/** The supervisor as users run it: bin/ferry-delegate.js (built dist) against a fake control plane. */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { WebSocketServer, type WebSocket } from 'ws';
import { DEFAULT_LIMITS, PROTOCOL_VERSION, decodeDelegateFrame, encodeFrame, type DelegateFrame, type ServerFrame } from '@ferry/shared';
import { tempDir, waitFor } from '../testing.js';

const bin = fileURLToPath(new URL('../../bin/ferry-delegate.js', import.meta.url));

interface Conn { ws: WebSocket; frames: DelegateFrame[] }

describe('ferry-delegate supervisor', () => {
  let tmp: ReturnType<typeof tempDir>;
  let server: Server;
  let wss: WebSocketServer;
  let conns: Conn[];
  let url: string;
  const procs: ChildProcess[] = [];

  beforeEach(async () => {
    tmp = tempDir();
    conns = [];
    wss = new WebSocketServer({ noServer: true });
    server = createServer((_req, res) => {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { code: 'NOT_FOUND', message: 'no release 0.2.0' } }));
    });
    server.on('upgrade', (req, socket, head) => wss.handleUpgrade(req, socket, head, (ws) => {
      const c: Conn = { ws, frames: [] };
      ws.on('message', (d: Buffer) => {
        const r = decodeDelegateFrame(d);
        if (r.ok) c.frames.push(r.frame);
      });
      conns.push(c);
    }));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterEach(async () => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    for (const c of wss.clients) c.terminate();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    tmp.cleanup();
  });

  const send = (c: Conn, f: ServerFrame) => c.ws.send(encodeFrame(f));
  const welcome = (c: Conn) => send(c, {
    type: 'welcome', sessionId: 's1', protocol: PROTOCOL_VERSION, heartbeatMs: 5000, limits: DEFAULT_LIMITS,
    serverTime: Date.now(), acks: [], forget: [], account: 'default', ring: 'ring0',
  });
  const childPids = (pid: number): number[] => {
    try {
      return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
    } catch {
      return [];
    }
  };

  function start(): ChildProcess {
    const p = spawn(process.execPath, [bin, '--url', url, '--name', 'sup-test'], {
      env: { PATH: process.env.PATH, HOME: process.env.HOME, FERRY_DELEGATE_TOKEN: 'tok', FERRY_STATE_DIR: tmp.dir, FERRY_LOG_LEVEL: 'warn', FERRY_RECONNECT_BASE: '20ms', FERRY_RECONNECT_MAX: '200ms' },
      stdio: ['ignore', 'ignore', 'ignore'],
    });
    procs.push(p);
    return p;
  }

  it('exits 2 with a message naming the variable on bad settings', () => {
    const r = spawnSync(process.execPath, [bin], { env: { PATH: process.env.PATH, HOME: tmp.dir }, encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/FERRY_DELEGATE_TOKEN/);
    const r2 = spawnSync(process.execPath, [bin, '--capacity', 'x'], { env: { PATH: process.env.PATH, FERRY_DELEGATE_TOKEN: 't' }, encoding: 'utf8' });
    expect(r2.status).toBe(2);
    expect(r2.stderr).toMatch(/--capacity/);
  });

  it('runs the worker, restarts it after a crash, forwards upgrades, and stops cleanly on SIGTERM', async () => {
    const p = start();
    await waitFor(() => conns.length === 1 && conns[0]!.frames.length > 0, 20_000, 'first hello');
    const first = conns[0]!;
    expect(first.frames[0]).toMatchObject({ type: 'hello', name: 'sup-test', version: '0.1.0' });
    welcome(first);

    // an upgrade the server cannot deliver: refused, reported through the worker, still on 0.1.0
    send(first, { type: 'upgrade', version: '0.2.0', sha256: 'a'.repeat(64), url: '/api/v1/releases/0.2.0/bundle' });
    await waitFor(() => first.frames.some((f) => f.type === 'upgrade.status' && f.state === 'failed'), 10_000, 'upgrade.status failed');
    expect(first.frames.filter((f) => f.type === 'upgrade.status').map((f) => (f as { state: string }).state)).toEqual(['downloading', 'failed']);
    expect(first.frames.find((f) => f.type === 'upgrade.status' && f.state === 'failed')).toMatchObject({ version: '0.2.0', error: expect.stringMatching(/HTTP 404: no release 0.2.0/) });

    const [workerPid] = childPids(p.pid!);
    expect(workerPid).toBeGreaterThan(0);
    process.kill(workerPid!, 'SIGKILL');
    await waitFor(() => conns.length === 2 && conns[1]!.frames.length > 0, 20_000, 'hello after restart');
    expect(conns[1]!.frames[0]).toMatchObject({ type: 'hello', delegateId: (first.frames[0] as { delegateId: string }).delegateId });
    welcome(conns[1]!);
    await new Promise((r) => setTimeout(r, 100));

    const exited = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
    p.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(childPids(p.pid!)).toEqual([]);
  }, 60_000);
});
