/**
 * The worker against a small fake control plane (a real ws server speaking the real
 * codec): hello/welcome, assignments, acks, reconnects with resend, refusals, drain,
 * and a kill -9 of the worker process.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocketServer, type WebSocket } from 'ws';
import {
  CloseCode, DEFAULT_LIMITS, PROTOCOL_VERSION, decodeDelegateFrame, encodeFrame,
  type DelegateFrame, type Hello, type LogChunk, type ServerFrame, type TaskAssign, type TaskResult, type Welcome,
} from '@ferry/shared';
import { loadConfig } from './config.js';
import { Worker } from './worker.js';
import { processGone, silentLogger, tempDir, waitFor } from './testing.js';

class FakeSession {
  readonly frames: DelegateFrame[] = [];
  closed = false;
  constructor(readonly ws: WebSocket, readonly auth: string | undefined) {
    ws.on('message', (data: Buffer) => {
      const d = decodeDelegateFrame(data);
      if (!d.ok) throw new Error(`delegate sent an invalid frame: ${d.message}`);
      this.frames.push(d.frame);
    });
    ws.on('close', () => { this.closed = true; });
  }
  get hello(): Hello {
    return this.frames[0] as Hello;
  }
  send(f: ServerFrame): void {
    this.ws.send(encodeFrame(f));
  }
  welcome(extra: Partial<Welcome> = {}): void {
    this.send({
      type: 'welcome', sessionId: `s-${Math.random().toString(36).slice(2)}`, protocol: PROTOCOL_VERSION, heartbeatMs: 5000,
      limits: DEFAULT_LIMITS, serverTime: Date.now(), acks: [], forget: [], account: 'default', ring: 'ring0', ...extra,
    });
  }
  of<T extends DelegateFrame['type']>(type: T): Extract<DelegateFrame, { type: T }>[] {
    return this.frames.filter((f) => f.type === type) as Extract<DelegateFrame, { type: T }>[];
  }
  async next<T extends DelegateFrame['type']>(type: T, pred: (f: Extract<DelegateFrame, { type: T }>) => boolean = () => true, timeoutMs = 15_000): Promise<Extract<DelegateFrame, { type: T }>> {
    let found: Extract<DelegateFrame, { type: T }> | undefined;
    await waitFor(() => { found = this.of(type).find(pred); return !!found; }, timeoutMs, `a ${type} frame`);
    return found!;
  }
}

class FakeControlPlane {
  readonly sessions: FakeSession[] = [];
  readonly refusals: number[] = [];
  refuse: number | null = null;
  private readonly server: Server;
  private readonly wss = new WebSocketServer({ noServer: true });
  url = '';

  constructor() {
    this.server = createServer((_req, res) => { res.writeHead(404); res.end(); });
    this.server.on('upgrade', (req, socket, head) => {
      if (req.url !== '/api/v1/delegate/connect') {
        socket.destroy();
        return;
      }
      if (this.refuse !== null) {
        this.refusals.push(this.refuse);
        const body = JSON.stringify({ error: { code: 'UNAUTHORIZED', message: 'token revoked' } });
        socket.end(`HTTP/1.1 ${this.refuse} Unauthorized\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`);
        return;
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => this.sessions.push(new FakeSession(ws, req.headers.authorization)));
    });
  }
  async listen(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }
  async session(index: number, timeoutMs = 15_000): Promise<FakeSession> {
    await waitFor(() => (this.sessions[index]?.frames.length ?? 0) > 0, timeoutMs, `session ${index} hello`);
    return this.sessions[index]!;
  }
  async close(): Promise<void> {
    for (const c of this.wss.clients) c.terminate();
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }
}

const assign = (taskId: string, spec: TaskAssign['spec'], extra: Partial<TaskAssign> = {}): TaskAssign => ({
  type: 'task.assign', taskId, attempt: 1, leaseMs: 30_000, spec, env: {}, secrets: {}, ...extra,
});

describe('delegate worker', () => {
  let tmp: ReturnType<typeof tempDir>;
  let cp: FakeControlPlane;
  let workers: Worker[];

  beforeEach(async () => {
    tmp = tempDir();
    cp = new FakeControlPlane();
    await cp.listen();
    workers = [];
  });
  afterEach(async () => {
    for (const w of workers) {
      w.cancelNow();
      await w.shutdown('test over');
    }
    await cp.close();
    tmp.cleanup();
  });

  function startWorker(env: Record<string, string> = {}): Worker {
    const config = loadConfig(['node', 'worker', '--url', cp.url, '--token', 'good-token', '--name', 'test-delegate', '--tags', 'linux,test'], {
      FERRY_STATE_DIR: tmp.dir, FERRY_RECONNECT_BASE: '20ms', FERRY_RECONNECT_MAX: '200ms', FERRY_CHUNK_FLUSH_MS: '10ms', FERRY_DRAIN_TIMEOUT: '5s', ...env,
    });
    const w = new Worker({ config, logger: silentLogger(), flushTimeoutMs: 2000 });
    workers.push(w);
    void w.start();
    return w;
  }

  it('says hello, runs an assigned shell task, spools and sends its log and result, forgets it on done', async () => {
    const w = startWorker();
    const s = await cp.session(0);
    expect(s.auth).toBe('Bearer good-token');
    const hello = s.hello;
    expect(hello).toMatchObject({ type: 'hello', protocol: PROTOCOL_VERSION, name: 'test-delegate', tags: ['linux', 'test'], capacity: 4, running: [] });
    expect([...hello.capabilities].sort()).toEqual(['http', 'noop', 'shell', 'verify']);
    expect(hello.delegateId).toBe(readFileSync(join(tmp.dir, 'delegate-id'), 'utf8').trim());
    expect(hello.version).toMatch(/^\d+\.\d+\.\d+/);
    s.welcome();

    s.send(assign('t1', { kind: 'shell', script: 'echo hello; echo "$FERRY_VAR_X"' }, { env: { FERRY_VAR_X: 'world' } }));
    await s.next('task.accept', (f) => f.taskId === 't1');
    const result = await s.next('task.result', (f) => f.taskId === 't1');
    expect(result.status).toBe('Succeeded');
    const chunks = s.of('log.chunk').filter((c) => c.taskId === 't1');
    expect(chunks.map((c) => c.seq)).toEqual(Array.from({ length: chunks.length }, (_, i) => i + 1));
    expect(result.seq).toBe(chunks.length + 1);
    expect(chunks.flatMap((c) => c.lines.map((l) => l.l))).toEqual(['hello', 'world']);
    // the accept went out before any chunk of the task
    expect(s.frames.findIndex((f) => f.type === 'task.accept')).toBeLessThan(s.frames.findIndex((f) => f.type === 'log.chunk'));

    s.send({ type: 'log.ack', taskId: 't1', attempt: 1, seq: result.seq, done: true });
    await waitFor(() => readdirSync(join(tmp.dir, 'spool')).length === 0, 5000, 'spool to empty');

    // the same attempt again is a duplicate now; unknown kinds and full capacity are refused
    s.send(assign('t1', { kind: 'noop' }));
    expect((await s.next('task.reject', (f) => f.taskId === 't1')).reason).toBe('duplicate');
    expect(w.delegateId).toBe(hello.delegateId);
  });

  it('resends what was not acknowledged after a reconnect, in order, and announces it in hello', async () => {
    startWorker();
    const s0 = await cp.session(0);
    s0.welcome({ limits: { ...DEFAULT_LIMITS, maxChunkLines: 10 } });
    s0.send(assign('t2', { kind: 'noop', lines: 50 }));
    const r0 = await s0.next('task.result', (f) => f.taskId === 't2');
    const lastSeq = r0.seq;
    expect(lastSeq).toBe(6);
    s0.send({ type: 'log.ack', taskId: 't2', attempt: 1, seq: 1 });
    await new Promise((r) => setTimeout(r, 100));
    s0.ws.close(CloseCode.GoingAway, 'server restart');

    const s1 = await cp.session(1);
    expect(s1.hello.running).toEqual([{ taskId: 't2', attempt: 1, lastAckedSeq: 1, lastSeq, finished: true }]);
    expect(s1.hello.delegateId).toBe(s0.hello.delegateId);
    // the server has more than the delegate knew: seq 2 arrived before the disconnect
    s1.welcome({ acks: [{ taskId: 't2', attempt: 1, seq: 2 }] });
    const r1 = await s1.next('task.result', (f) => f.taskId === 't2');
    expect(r1).toEqual(r0);
    const resent = s1.frames.filter((f) => f.type === 'log.chunk' || f.type === 'task.result').map((f) => (f as LogChunk).seq);
    expect(resent).toEqual(Array.from({ length: lastSeq - 2 }, (_, i) => i + 3));
    const lines = [...s0.of('log.chunk').filter((c) => c.seq <= 2), ...s1.of('log.chunk')].flatMap((c) => c.lines.map((l) => l.l));
    expect(lines).toEqual(Array.from({ length: 50 }, (_, i) => `noop line ${i + 1}`));

    s1.send({ type: 'log.ack', taskId: 't2', attempt: 1, seq: lastSeq, done: true });
    await waitFor(() => readdirSync(join(tmp.dir, 'spool')).length === 0, 5000, 'spool to empty');
  });

  it('welcome.forget cancels a running task and drops its spool', async () => {
    startWorker();
    const s0 = await cp.session(0);
    s0.welcome();
    s0.send(assign('t3', { kind: 'shell', script: 'echo start; sleep 1000' }));
    await s0.next('log.chunk', (f) => f.taskId === 't3');
    s0.ws.terminate();
    const s1 = await cp.session(1);
    expect(s1.hello.running).toMatchObject([{ taskId: 't3', finished: false }]);
    s1.welcome({ forget: ['t3'] });
    await waitFor(() => readdirSync(join(tmp.dir, 'spool')).length === 0, 10_000, 'spool to empty');
    await new Promise((r) => setTimeout(r, 200));
    expect(s1.of('task.result')).toEqual([]);
  });

  it('drops a silent session after 3 heartbeat intervals and reconnects', async () => {
    startWorker();
    const s0 = await cp.session(0);
    s0.welcome({ heartbeatMs: 100 });
    await s0.next('heartbeat', () => true, 2000);
    const hb = s0.of('heartbeat')[0]!;
    expect(hb).toMatchObject({ running: [], load: 0 });
    // the fake server never answers: the delegate gives up on the session by itself
    const s1 = await cp.session(1, 5000);
    expect(s0.closed).toBe(true);
    expect(s1.hello.type).toBe('hello');
  });

  it('keeps retrying after a refused upgrade (401) and connects once the server accepts', async () => {
    cp.refuse = 401;
    const w = startWorker();
    await waitFor(() => cp.refusals.length >= 2, 10_000, 'two refused attempts');
    cp.refuse = null;
    const s = await cp.session(0, 10_000);
    s.welcome();
    await waitFor(() => (w as unknown as { connection: { connected: boolean } }).connection.connected, 5000, 'connected');
  });

  it('reconnects after being replaced by another session', async () => {
    startWorker();
    const s0 = await cp.session(0);
    s0.welcome();
    s0.ws.close(CloseCode.Replaced, 'replaced by a newer session');
    const s1 = await cp.session(1);
    expect(s1.hello.delegateId).toBe(s0.hello.delegateId);
  });

  it('drains on shutdown: refuses new tasks, lets the running one finish, flushes, stops', async () => {
    const w = startWorker();
    const s = await cp.session(0);
    s.welcome();
    s.send(assign('t4', { kind: 'shell', script: 'sleep 0.5; echo finished' }));
    await s.next('task.accept', (f) => f.taskId === 't4');
    const stopped = w.shutdown('test');
    await new Promise((r) => setTimeout(r, 50));
    s.send(assign('t5', { kind: 'noop' }));
    expect((await s.next('task.reject', (f) => f.taskId === 't5')).reason).toBe('draining');
    const result = await s.next('task.result', (f) => f.taskId === 't4');
    expect(result.status).toBe('Succeeded');
    s.send({ type: 'log.ack', taskId: 't4', attempt: 1, seq: result.seq, done: true });
    await stopped;
    expect(readdirSync(join(tmp.dir, 'spool'))).toEqual([]);
    await waitFor(() => s.closed, 3000, 'session closed');
  });
});

describe('delegate worker process', () => {
  let tmp: ReturnType<typeof tempDir>;
  let cp: FakeControlPlane;
  const children: ChildProcess[] = [];
  const entry = fileURLToPath(new URL('../dist/worker-main.js', import.meta.url));

  beforeEach(async () => {
    tmp = tempDir();
    cp = new FakeControlPlane();
    await cp.listen();
  });
  afterEach(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await cp.close();
    tmp.cleanup();
  });

  function spawnWorker(): ChildProcess {
    const c = spawn(process.execPath, [entry], {
      env: {
        PATH: process.env.PATH, HOME: process.env.HOME, FERRY_URL: cp.url, FERRY_DELEGATE_TOKEN: 'good-token', FERRY_STATE_DIR: tmp.dir,
        FERRY_RECONNECT_BASE: '20ms', FERRY_RECONNECT_MAX: '200ms', FERRY_LOG_LEVEL: 'warn', FERRY_DELEGATE_VERSION: '9.9.9-test',
      },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    children.push(c);
    return c;
  }

  it('survives kill -9: the restarted worker re-announces the task, kills its orphans, reports DelegateLost and resends', async () => {
    expect(existsSync(entry)).toBe(true); // built by `tsc -b` (pnpm test builds first)
    const pidFile = join(tmp.dir, 'orphan.pid');
    const w1 = spawnWorker();
    const s0 = await cp.session(0);
    expect(s0.hello.version).toBe('9.9.9-test');
    s0.welcome();
    s0.send(assign('t9', { kind: 'shell', script: `echo before; sleep 1000 & echo $! > ${pidFile}; sleep 1000` }));
    await s0.next('log.chunk', (f) => f.taskId === 't9');
    await waitFor(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '', 5000, 'pid file');
    const orphan = Number(readFileSync(pidFile, 'utf8'));
    w1.kill('SIGKILL');
    await new Promise((r) => w1.once('exit', r));
    expect(processGone(orphan)).toBe(false);

    const w2 = spawnWorker();
    const s1 = await cp.session(1);
    expect(s1.hello.delegateId).toBe(s0.hello.delegateId);
    const announced = s1.hello.running;
    expect(announced).toHaveLength(1);
    expect(announced[0]).toMatchObject({ taskId: 't9', attempt: 1, lastAckedSeq: 0, finished: true });
    s1.welcome();
    const result = await s1.next('task.result', (f) => f.taskId === 't9') as TaskResult;
    expect(result.status).toBe('Failed');
    expect(result.error?.kind).toBe('DelegateLost');
    expect(result.seq).toBe(announced[0]!.lastSeq);
    const lines = s1.of('log.chunk').flatMap((c) => c.lines.map((l) => l.l));
    expect(lines[0]).toBe('before');
    await waitFor(() => processGone(orphan), 15_000, 'orphan to be gone');

    s1.send({ type: 'log.ack', taskId: 't9', attempt: 1, seq: result.seq, done: true });
    await waitFor(() => readdirSync(join(tmp.dir, 'spool')).length === 0, 5000, 'spool to empty');
    w2.kill('SIGTERM');
    const code = await new Promise((r) => w2.once('exit', (c) => r(c)));
    expect(code).toBe(0);
  }, 60_000);
});
