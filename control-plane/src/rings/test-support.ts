/** Fixtures for the rings unit tests: bundles, a store, fake sessions, task rows. */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { create } from 'tar';
import { pino } from 'pino';
import { newId, PROTOCOL_VERSION, type Upgrade } from '@ferry/shared';
import { openStore, type Store } from '../store/db.js';
import { bootstrap } from '../store/bootstrap.js';
import { createAccount } from '../store/accounts.js';
import { RingService, type SessionLike } from './service.js';

export interface BundleOptions {
  worker?: string;
  sha256?: string;
  manifest?: Record<string, unknown> | null;
  entry?: string;
  extra?: Record<string, string>;
}

/** A bundle as `pnpm --filter @ferry/delegate bundle` makes it. */
export async function makeBundle(version: string, o: BundleOptions = {}): Promise<Buffer> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bundle-'));
  try {
    const entry = o.entry ?? 'worker.mjs';
    const worker = o.worker ?? `console.log(${JSON.stringify(version)});\n`;
    fs.writeFileSync(path.join(dir, entry), worker);
    const files = [entry];
    if (o.manifest !== null) {
      const manifest = o.manifest ?? {
        version, protocol: PROTOCOL_VERSION, entry,
        sha256: o.sha256 ?? crypto.createHash('sha256').update(worker).digest('hex'),
        builtAt: new Date(0).toISOString(),
      };
      fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(manifest));
      files.unshift('manifest.json');
    }
    for (const [name, text] of Object.entries(o.extra ?? {})) {
      fs.writeFileSync(path.join(dir, name), text);
      files.push(name);
    }
    const chunks: Buffer[] = [];
    for await (const c of create({ gzip: true, cwd: dir, portable: true }, files.map((f) => `./${f}`))) chunks.push(c as Buffer);
    return Buffer.concat(chunks);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export class FakeClock {
  constructor(public t = 1_700_000_000_000) {}
  now(): number {
    return this.t;
  }
  advance(ms: number): void {
    this.t += ms;
  }
}

export class FakeSession implements SessionLike {
  readonly sessionId = newId();
  closed = false;
  probation = false;
  hello: { failedVersions?: string[] } | null = {};
  sent: Upgrade[] = [];
  constructor(public delegateId: string, public accountId: string, public version: string) {}
  send(frame: Upgrade): boolean {
    this.sent.push(frame);
    return true;
  }
  offers(): string[] {
    return this.sent.map((f) => f.version);
  }
}

export interface Fixture {
  dir: string;
  store: Store;
  clock: FakeClock;
  sessions: FakeSession[];
  service(): RingService;
  account(name: string, ring: string): Promise<string>;
  defaultAccount: string;
  delegate(id: string, accountId: string, version: string, o?: { upgrade?: { version: string; state: string; error?: string | null } | null; failed?: string[] }): Promise<FakeSession>;
  setDelegate(id: string, patch: { version?: string; upgrade?: { version: string; state: string; error?: string | null } | null; failed?: string[] }): Promise<void>;
  tasks(n: number, o: { account: string; kind: string; version: string; status: 'succeeded' | 'failed' | 'canceled'; errorKind?: string; at?: number }): Promise<void>;
  close(): Promise<void>;
}

export async function fixture(config: { soakMs?: number; minSample?: number; alpha?: number } = {}): Promise<Fixture> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-rings-'));
  const store = openStore(`sqlite:${path.join(dir, 'ferry.db')}`);
  await store.migrate();
  const clock = new FakeClock();
  await bootstrap(store, dir, clock.now());
  const def = await store.db.selectFrom('accounts').select('id').where('name', '=', 'default').executeTakeFirstOrThrow();
  const sessions: FakeSession[] = [];
  const logger = pino({ level: 'silent' });
  let seq = 0;
  const f: Fixture = {
    dir,
    store,
    clock,
    sessions,
    defaultAccount: def.id,
    service: () => new RingService({
      store, clock, logger, sessions: () => sessions,
      config: { dataDir: dir, ringSoakMs: config.soakMs ?? 60_000, ringMinSample: config.minSample ?? 20, ringAlpha: config.alpha ?? 0.01, ringCheckMs: 3_600_000 },
    }),
    account: async (name, ring) => (await createAccount(store.db, name, ring, clock.now())).id,
    async delegate(id, accountId, version, o = {}) {
      await store.db.insertInto('delegates').values({
        id, account_id: accountId, token_id: 't', name: id, version, tags: '[]', capabilities: '[]', capacity: 4, running: 0,
        connected: 1, session_id: null, server_id: null, connected_at: clock.now(), last_seen_at: clock.now(), disconnected_at: null,
        upgrade: o.upgrade ? JSON.stringify(o.upgrade) : null, failed_versions: JSON.stringify(o.failed ?? []), created_at: clock.now(),
      }).execute();
      const s = new FakeSession(id, accountId, version);
      s.hello = {};
      sessions.push(s);
      return s;
    },
    async setDelegate(id, patch) {
      const set: Record<string, unknown> = {};
      if (patch.version !== undefined) set.version = patch.version;
      if (patch.upgrade !== undefined) set.upgrade = patch.upgrade ? JSON.stringify(patch.upgrade) : null;
      if (patch.failed !== undefined) set.failed_versions = JSON.stringify(patch.failed);
      await store.db.updateTable('delegates').set(set).where('id', '=', id).execute();
      for (const s of sessions) if (s.delegateId === id && patch.version !== undefined) s.version = patch.version;
    },
    async tasks(n, o) {
      const at = o.at ?? clock.now();
      for (let i = 0; i < n; i++) {
        await store.db.insertInto('tasks').values({
          id: newId(), account_id: o.account, execution_id: null, kind: o.kind, spec: '{}', env: '{}', secret_names: '[]', selectors: '[]',
          capabilities: '[]', priority: 0, status: o.status, attempt: 1, delegate_id: null, delegate_version: o.version, lease_expires_at: null,
          queued_at: at, queue_seq: ++seq, assigned_at: at, started_at: at, finished_at: at, timeout_ms: null, queue_timeout_ms: 3_600_000,
          cancel_requested: 0, cancel_reason: null, result: null, last_seq: 0,
          error_kind: o.status === 'succeeded' ? null : o.errorKind ?? (o.status === 'canceled' ? 'Canceled' : 'StepFailed'),
        }).execute();
      }
    },
    async close() {
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  return f;
}
