/**
 * The supervisor's upgrades, with real bundles (scripts/bundle.mjs), the built
 * bin/ferry-delegate.js and a fake control plane (WebSocket + the bundle route):
 * download and verify, probation, switch, rollback from disk, refusals (sha256, probation
 * crash), the failed list, `current` across restarts, and keeping three versions.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { WebSocketServer, type WebSocket } from 'ws';
import * as tar from 'tar';
import {
  DEFAULT_LIMITS, PROTOCOL_VERSION, decodeDelegateFrame, encodeFrame, type DelegateFrame, type Hello, type ServerFrame, type UpgradeStatus,
} from '@ferry/shared';
import { tempDir, waitFor } from '../testing.js';

const pkgDir = fileURLToPath(new URL('../../', import.meta.url));
const bin = join(pkgDir, 'bin', 'ferry-delegate.js');

interface Conn { ws: WebSocket; frames: DelegateFrame[]; hello: Hello | null; closed: boolean }
interface Built { version: string; file: string; sha256: string; buf: Buffer }

function buildBundle(out: string, version: string, ...fault: string[]): Built {
  const r = spawnSync(process.execPath, [join(pkgDir, 'scripts', 'bundle.mjs'), '--version', version, '--out', out, ...fault.flatMap((f) => ['--fault', f])], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`bundle failed: ${r.stderr}`);
  const file = r.stdout.trim().split('\n').pop()!;
  const buf = readFileSync(file);
  const sha256 = /sha256 ([0-9a-f]{64})/.exec(r.stdout)![1]!;
  return { version, file, sha256, buf };
}

describe('supervisor upgrades', () => {
  let out: ReturnType<typeof tempDir>;
  const b: Record<string, Built> = {};

  beforeAll(async () => {
    out = tempDir('ferry-bundles-');
    for (const v of ['1.0.0', '2.0.0', '3.0.0', '4.0.0']) b[v] = buildBundle(out.dir, v);
    b.crash = buildBundle(out.dir, '9.0.0-crash', 'crash-on-start');
    b.crashLater = buildBundle(out.dir, '9.1.0-crash-later', 'crash-after-probation');
    // a bundle whose worker does not match its own manifest (as if altered after it was built)
    const x = join(out.dir, 'tampered');
    mkdirSync(x);
    await tar.x({ file: b['1.0.0']!.file, cwd: x });
    const m = JSON.parse(readFileSync(join(x, 'manifest.json'), 'utf8')) as { version: string };
    m.version = '5.0.0-tampered';
    writeFileSync(join(x, 'manifest.json'), JSON.stringify(m));
    writeFileSync(join(x, 'worker.mjs'), `${readFileSync(join(x, 'worker.mjs'), 'utf8')}\n// altered\n`);
    const file = join(out.dir, 'ferry-delegate-5.0.0-tampered.tgz');
    await tar.c({ gzip: true, cwd: x, file }, ['manifest.json', 'worker.mjs']);
    // offered with the digest of the altered worker: only the manifest disagrees
    b.tampered = { version: '5.0.0-tampered', file, sha256: createHash('sha256').update(readFileSync(join(x, 'worker.mjs'))).digest('hex'), buf: readFileSync(file) };
  }, 120_000);
  afterAll(() => out?.cleanup());

  let tmp: ReturnType<typeof tempDir>;
  let server: Server;
  let wss: WebSocketServer;
  let conns: Conn[];
  let url: string;
  let served: Map<string, Buffer>;
  let downloads: string[];
  let welcomeProbation: boolean;
  const procs: ChildProcess[] = [];

  beforeEach(async () => {
    tmp = tempDir();
    conns = [];
    served = new Map();
    downloads = [];
    welcomeProbation = true;
    wss = new WebSocketServer({ noServer: true });
    server = createServer((req, res) => {
      const m = /^\/api\/v1\/releases\/([^/]+)\/bundle$/.exec(req.url ?? '');
      const buf = m ? served.get(decodeURIComponent(m[1]!)) : undefined;
      if (req.headers.authorization !== 'Bearer tok') {
        res.writeHead(401).end();
      } else if (!buf) {
        res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'NOT_FOUND', message: 'no such release' } }));
      } else {
        downloads.push(m![1]!);
        res.writeHead(200, { 'content-type': 'application/gzip', 'content-length': buf.length }).end(buf);
      }
    });
    server.on('upgrade', (req, socket, head) => wss.handleUpgrade(req, socket, head, (ws) => {
      const c: Conn = { ws, frames: [], hello: null, closed: false };
      ws.on('message', (d: Buffer) => {
        const r = decodeDelegateFrame(d);
        if (!r.ok) return;
        c.frames.push(r.frame);
        if (r.frame.type === 'hello') {
          c.hello = r.frame;
          if (r.frame.probation && !welcomeProbation) return;
          send(c, {
            type: 'welcome', sessionId: `s${conns.indexOf(c)}`, protocol: PROTOCOL_VERSION, heartbeatMs: 5000, limits: DEFAULT_LIMITS,
            serverTime: Date.now(), acks: [], forget: [], account: 'default', ring: 'ring0',
          });
        }
      });
      ws.on('close', () => { c.closed = true; });
      conns.push(c);
    }));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterEach(async () => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    procs.length = 0;
    for (const c of wss.clients) c.terminate();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    tmp.cleanup();
  });

  const send = (c: Conn, f: ServerFrame) => c.ws.send(encodeFrame(f));
  const statuses = (version?: string) => conns.flatMap((c) => c.frames)
    .filter((f): f is UpgradeStatus => f.type === 'upgrade.status' && (!version || f.version === version));
  const live = () => conns.filter((c) => !c.closed && c.hello && !c.hello.probation);
  const current = () => {
    const l = live();
    return l[l.length - 1];
  };
  const offer = (v: Built, sha256 = v.sha256) => {
    served.set(v.version, v.buf);
    const c = current();
    if (!c) throw new Error('no live session');
    send(c, { type: 'upgrade', version: v.version, sha256, url: `/api/v1/releases/${v.version}/bundle` });
  };
  const waitState = (version: string, state: string, timeout = 30_000) =>
    waitFor(() => statuses(version).some((s) => s.state === state), timeout, `${version} ${state} (got ${JSON.stringify(statuses(version))})`);
  const onVersion = (version: string, timeout = 30_000) =>
    waitFor(() => current()?.hello?.version === version, timeout, `a normal session on ${version}`);

  function start(env: Record<string, string> = {}): ChildProcess {
    const p = spawn(process.execPath, [bin, '--url', url, '--name', 'upg-test'], {
      env: {
        PATH: process.env.PATH, HOME: process.env.HOME, FERRY_DELEGATE_TOKEN: 'tok', FERRY_STATE_DIR: tmp.dir, FERRY_LOG_LEVEL: process.env.FERRY_TEST_LOG_LEVEL ?? 'warn',
        FERRY_RECONNECT_BASE: '20ms', FERRY_RECONNECT_MAX: '200ms', FERRY_PROBATION_TIMEOUT: '15s', ...env,
      },
      stdio: ['ignore', process.env.FERRY_TEST_LOG_LEVEL ? 'inherit' : 'ignore', 'inherit'],
    });
    procs.push(p);
    return p;
  }
  async function stop(p: ChildProcess): Promise<number | null> {
    const exited = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
    p.kill('SIGTERM');
    return exited;
  }

  it('downloads, verifies, runs the new version on probation, switches, and keeps it across restarts', async () => {
    const p = start();
    await onVersion('0.1.0');
    offer(b['1.0.0']!);
    await waitState('1.0.0', 'succeeded');
    expect(statuses('1.0.0').map((s) => s.state)).toEqual(['downloading', 'verifying', 'draining', 'probation', 'succeeded']);
    // the probation session: probation true, no capacity; then a normal session on 1.0.0
    const probation = conns.find((c) => c.hello?.probation);
    expect(probation?.hello).toMatchObject({ version: '1.0.0', probation: true, capacity: 0 });
    await onVersion('1.0.0');
    expect(current()!.hello).toMatchObject({ version: '1.0.0', capacity: 4 });
    expect(current()!.hello!.probation).toBeUndefined();
    expect(readFileSync(join(tmp.dir, 'current'), 'utf8').trim()).toBe('1.0.0');
    expect(existsSync(join(tmp.dir, 'versions', '1.0.0', 'worker.mjs'))).toBe(true);
    expect(downloads).toEqual(['1.0.0']);

    // restarted: runs 1.0.0 from disk at once (no download)
    expect(await stop(p)).toBe(0);
    const before = conns.length;
    const p2 = start();
    await waitFor(() => conns.length > before && conns[conns.length - 1]!.hello !== null, 20_000, 'hello after restart');
    expect(conns[conns.length - 1]!.hello).toMatchObject({ version: '1.0.0' });
    expect(conns[conns.length - 1]!.hello!.probation).toBeUndefined();
    expect(downloads).toEqual(['1.0.0']);
    expect(await stop(p2)).toBe(0);

    // the current version's files damaged: the built-in worker runs instead (no control plane needed)
    writeFileSync(join(tmp.dir, 'versions', '1.0.0', 'worker.mjs'), '// damaged\n');
    const before2 = conns.length;
    const p3 = start();
    await waitFor(() => conns.length > before2 && conns[conns.length - 1]!.hello !== null, 20_000, 'hello after restart on a damaged version');
    expect(conns[conns.length - 1]!.hello).toMatchObject({ version: '0.1.0' });
    expect(await stop(p3)).toBe(0);
  }, 90_000);

  it('rolls back to a version on disk without downloading it, and keeps the last three versions', async () => {
    const p = start();
    await onVersion('0.1.0');
    for (const v of ['1.0.0', '2.0.0']) {
      offer(b[v]!);
      await waitState(v, 'succeeded');
      await onVersion(v);
    }
    const n = statuses('1.0.0').length;
    offer(b['1.0.0']!);
    await waitFor(() => statuses('1.0.0').slice(n).some((s) => s.state === 'succeeded'), 30_000, 'back on 1.0.0');
    await onVersion('1.0.0');
    expect(statuses('1.0.0').slice(n).map((s) => s.state)).toEqual(['draining', 'probation', 'succeeded']);
    expect(downloads).toEqual(['1.0.0', '2.0.0']);
    for (const v of ['3.0.0', '4.0.0']) {
      offer(b[v]!);
      await waitState(v, 'succeeded');
      await onVersion(v);
    }
    expect(readdirSync(join(tmp.dir, 'versions')).filter((f) => !f.startsWith('.')).sort()).toEqual(['1.0.0', '3.0.0', '4.0.0']);
    expect(await stop(p)).toBe(0);
  }, 120_000);

  it('refuses a bundle whose sha256 does not match the offer or its manifest, and keeps running', async () => {
    const p = start();
    await onVersion('0.1.0');
    offer(b['2.0.0']!, 'b'.repeat(64));
    await waitState('2.0.0', 'failed');
    expect(statuses('2.0.0').find((s) => s.state === 'failed')!.error).toMatch(/sha256 mismatch: .* the control plane says bbbb/);
    offer(b.tampered!);
    await waitState(b.tampered!.version, 'failed');
    expect(statuses(b.tampered!.version).find((s) => s.state === 'failed')!.error).toMatch(/sha256 mismatch: .* its manifest says/);
    // never started: no probation session, still the same worker on 0.1.0
    expect(conns.some((c) => c.hello?.probation)).toBe(false);
    expect(conns.filter((c) => c.hello).length).toBe(1);
    expect(current()!.hello!.version).toBe('0.1.0');
    expect(existsSync(join(tmp.dir, 'versions', '2.0.0'))).toBe(false);
    expect(await stop(p)).toBe(0);
  }, 60_000);

  it('a worker that cannot start fails probation: back on the old version at once, failed version reported and not retried', async () => {
    const p = start({ FERRY_PROBATION_TIMEOUT: '10s' });
    await onVersion('0.1.0');
    const crash = b.crash!;
    const t0 = Date.now();
    offer(crash);
    await waitState(crash.version, 'failed');
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(statuses(crash.version).map((s) => s.state)).toEqual(['downloading', 'verifying', 'draining', 'failed']);
    expect(statuses(crash.version).find((s) => s.state === 'failed')!.error).toMatch(/probation failed: the worker exited during probation \(exit code 1.*rolled back to 0\.1\.0/);
    await onVersion('0.1.0');
    // every session of the old version from now on says so in its hello
    expect(current()!.hello!.failedVersions).toEqual([crash.version]);
    expect(conns.some((c) => c.hello?.version === crash.version)).toBe(false);
    // offered again (same target): refused without a download
    const n = statuses(crash.version).length;
    offer(crash);
    await waitFor(() => statuses(crash.version).length > n, 10_000, 'second answer');
    expect(statuses(crash.version)[n]).toMatchObject({ state: 'failed', error: expect.stringMatching(/failed on this delegate before/) });
    expect(downloads).toEqual([crash.version]);
    // a different target clears the list
    offer(b['1.0.0']!);
    await waitState('1.0.0', 'succeeded');
    await onVersion('1.0.0');
    expect(current()!.hello!.failedVersions).toBeUndefined();
    expect(await stop(p)).toBe(0);
  }, 90_000);

  it('a version that passes probation and then keeps crashing is rolled back to the one it came from', async () => {
    const p = start({ FERRY_CRASH_LOOP_EXITS: '3', FERRY_CRASH_LOOP_WINDOW: '5m' });
    await onVersion('0.1.0');
    const bad = b.crashLater!;
    offer(bad);
    await waitState(bad.version, 'succeeded');
    await waitState(bad.version, 'failed', 60_000);
    expect(statuses(bad.version).find((s) => s.state === 'failed')!.error)
      .toMatch(/crash loop after probation: the worker exited 3 times \(last: exit code 1 after \d+ms\); rolled back to 0\.1\.0/);
    await onVersion('0.1.0');
    expect(current()!.hello!.failedVersions).toEqual([bad.version]);
    expect(readFileSync(join(tmp.dir, 'current'), 'utf8').trim()).toBe('0.1.0');
    // restarted, it stays on the old version
    expect(await stop(p)).toBe(0);
    const before = conns.length;
    const p2 = start();
    await waitFor(() => conns.length > before && conns[conns.length - 1]!.hello !== null, 20_000, 'hello after restart');
    expect(conns[conns.length - 1]!.hello).toMatchObject({ version: '0.1.0', failedVersions: [bad.version] });
    expect(await stop(p2)).toBe(0);
  }, 90_000);

  it('a probation that never gets ready times out and rolls back', async () => {
    const p = start({ FERRY_PROBATION_TIMEOUT: '3s' });
    await onVersion('0.1.0');
    // the probation session is never welcomed
    welcomeProbation = false;
    offer(b['1.0.0']!);
    await waitState('1.0.0', 'failed', 20_000);
    expect(statuses('1.0.0').find((s) => s.state === 'failed')!.error).toMatch(/probation failed: not connected with its self-checks passed within 3s; rolled back to 0\.1\.0/);
    await onVersion('0.1.0');
    expect(await stop(p)).toBe(0);
  }, 60_000);
});
