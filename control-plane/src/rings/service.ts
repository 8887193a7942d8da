/**
 * Rings: each account belongs to one ring; each ring has a target delegate version and
 * a history. This service changes targets (set, rollout, rollback, pause, resume), offers
 * `upgrade` frames to the delegates whose version differs from their ring's target, and
 * runs rollouts: soak, health check (health.ts), advance ring by ring, or halt and roll
 * back by itself.
 *
 * Every change of a ring's version goes through `changeVersion`, which writes the ring
 * and its history row in one transaction. Rollout state lives in `rings.rollout` and is
 * moved with compare-and-set on that column, so servers sharing a PostgreSQL database
 * never advance or halt one rollout twice.
 */
import type { Upgrade, UpgradeStatus } from '@ferry/shared';
import { FerryError, formatDuration, newId } from '@ferry/shared';
import type { Store, Executor } from '../store/db.js';
import type { RingsTable } from '../store/schema.js';
import type { Clock } from '../clock.js';
import type { Logger } from '../logger.js';
import type { ServerConfig } from '../config.js';
import { Releases } from './releases.js';
import { EXCLUDED_ERROR_KINDS, HISTORY_BASELINE, evidenceOf, judgeHealth, type Counts, type HealthVerdict, type KindSample } from './health.js';
import {
  ACTIVE_STATES, type DelegateCounts, type HistoryEntry, type RingView, type Rollout, type RolloutView,
} from './types.js';

/** What the service needs of a gateway session (gateway/gateway.ts `Session`). */
export interface SessionLike {
  readonly sessionId: string;
  delegateId: string;
  accountId: string;
  version: string;
  probation: boolean;
  closed: boolean;
  hello: { failedVersions?: string[] | undefined } | null;
  send(frame: Upgrade): boolean;
}

export interface RingDeps {
  store: Store;
  clock: Clock;
  logger: Logger;
  config: Pick<ServerConfig, 'dataDir' | 'ringSoakMs' | 'ringMinSample' | 'ringAlpha' | 'ringCheckMs'>;
  /** the sessions open on this server */
  sessions(): SessionLike[];
}

/** The identity recorded for what the control plane does by itself. */
export const SYSTEM_ACTOR = 'ferry';
/** An offer not acted on is made again after this long (periodic check only). */
const REOFFER_MS = 5 * 60_000;
const IN_PROGRESS = new Set(['downloading', 'verifying', 'draining', 'probation']);
const FAILED = new Set(['failed', 'rolledBack']);

interface RingRow extends RingsTable {
  parsed: Rollout | null;
}

interface DelegateRow {
  id: string;
  account_id: string;
  version: string;
  upgrade: string | null;
  failed_versions: string;
}

const iso = (ms: number): string => new Date(ms).toISOString();

function parseJson<T>(text: string | null | undefined, fallback: T): T {
  if (text == null) return fallback;
  try {
    return JSON.parse(text) as T;
  } catch {
    return fallback;
  }
}

export function rolloutView(r: Rollout | null): RolloutView | null {
  if (!r) return null;
  return {
    version: r.version,
    state: r.state,
    since: iso(r.since),
    startedAt: iso(r.startedAt),
    soak: r.soakMs,
    soakEndsAt: iso(r.soakStartedAt + r.soakMs),
    by: r.by,
    reason: r.reason,
  };
}

/** Where a delegate stands against its ring's target. */
export function classify(d: DelegateRow, target: string | null): keyof Omit<DelegateCounts, 'total'> {
  if (target === null) return 'other';
  const up = parseJson<{ version?: string; state?: string } | null>(d.upgrade, null);
  if (up?.version === target && IN_PROGRESS.has(up.state ?? '')) return 'upgrading';
  if (d.version === target) return 'onTarget';
  if (parseJson<string[]>(d.failed_versions, []).includes(target)) return 'failed';
  if (up?.version === target && FAILED.has(up.state ?? '')) return 'failed';
  return 'other';
}

export class RingService {
  readonly releases: Releases;
  private readonly log: Logger;
  private chain: Promise<unknown> = Promise.resolve();
  private timer: NodeJS.Timeout | null = null;
  private kickTimer: NodeJS.Timeout | null = null;
  private stopped = false;
  /** last offer per delegate, so the periodic pass does not repeat itself */
  private readonly offered = new Map<string, { version: string; at: number }>();
  /** sessions whose hello.failedVersions predate a change of their ring's target */
  private readonly helloStale = new Set<string>();

  constructor(private readonly deps: RingDeps) {
    this.releases = new Releases(deps.store.db, deps.config.dataDir);
    this.log = deps.logger.child({ mod: 'rings' });
  }

  private get db() {
    return this.deps.store.db;
  }

  /** Mutations and checks run one at a time in this process. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  // ---- reading -----------------------------------------------------------------------------

  private async rings(db: Executor = this.db): Promise<RingRow[]> {
    const rows = await db.selectFrom('rings').selectAll().orderBy('ord').execute();
    return rows.map((r) => ({ ...r, ord: Number(r.ord), paused: Number(r.paused), parsed: parseJson<Rollout | null>(r.rollout, null) }));
  }

  private async ring(name: string, db: Executor = this.db): Promise<RingRow> {
    const r = (await this.rings(db)).find((x) => x.name === name);
    if (!r) throw new FerryError('NOT_FOUND', `no ring ${name}`);
    return r;
  }

  private async connectedDelegates(ring?: string): Promise<Array<DelegateRow & { ring: string }>> {
    let q = this.db.selectFrom('delegates').innerJoin('accounts', 'accounts.id', 'delegates.account_id')
      .select(['delegates.id', 'delegates.account_id', 'delegates.version', 'delegates.upgrade', 'delegates.failed_versions', 'accounts.ring'])
      .where('delegates.connected', '=', 1);
    if (ring) q = q.where('accounts.ring', '=', ring);
    return q.execute();
  }

  async countDelegates(ring: string, target: string | null): Promise<DelegateCounts> {
    const c: DelegateCounts = { total: 0, onTarget: 0, other: 0, upgrading: 0, failed: 0 };
    for (const d of await this.connectedDelegates(ring)) {
      c.total++;
      c[classify(d, target)]++;
    }
    return c;
  }

  async list(): Promise<RingView[]> {
    const [rings, accounts, delegates] = await Promise.all([
      this.rings(),
      this.db.selectFrom('accounts').select(['name', 'ring']).orderBy('name').execute(),
      this.connectedDelegates(),
    ]);
    return rings.map((r) => {
      const c: DelegateCounts = { total: 0, onTarget: 0, other: 0, upgrading: 0, failed: 0 };
      for (const d of delegates) {
        if (d.ring !== r.name) continue;
        c.total++;
        c[classify(d, r.version)]++;
      }
      return {
        name: r.name,
        order: r.ord,
        version: r.version,
        previousVersion: r.previous_version,
        paused: r.paused === 1,
        accounts: accounts.filter((a) => a.ring === r.name).map((a) => a.name),
        delegates: c,
        rollout: rolloutView(r.parsed),
      };
    });
  }

  async get(name: string): Promise<RingView> {
    const v = (await this.list()).find((r) => r.name === name);
    if (!v) throw new FerryError('NOT_FOUND', `no ring ${name}`);
    return v;
  }

  /** Newest first. */
  async history(name: string): Promise<HistoryEntry[]> {
    await this.ring(name);
    const rows = await this.db.selectFrom('ring_history').selectAll().where('ring', '=', name).orderBy('at', 'desc').orderBy('id', 'desc').execute();
    return rows.map((h) => ({
      at: iso(Number(h.at)),
      from: h.from_version,
      to: h.to_version,
      by: h.by,
      reason: h.reason,
      evidence: parseJson<unknown>(h.evidence, null),
    }));
  }

  private async requireRelease(version: string): Promise<void> {
    if (!(await this.releases.get(version))) {
      throw new FerryError('NOT_FOUND', `release ${version} is not published; publish it first (ferry release publish BUNDLE.tgz)`, { field: 'version' });
    }
  }

  // ---- writing -----------------------------------------------------------------------------

  /**
   * The one way a ring's version changes: ring row + history row in one transaction.
   * Delegates of the ring forget their failed versions (a failed version is retried once
   * the target changed again); the caller delivers after commit.
   */
  private async changeVersion(trx: Executor, ring: RingRow, to: string | null, o: {
    by: string; reason: string; evidence?: unknown; previous?: string | null; rollout?: Rollout | null;
  }): Promise<void> {
    const now = this.deps.clock.now();
    const set: Partial<RingsTable> = {
      version: to,
      previous_version: o.previous !== undefined ? o.previous : ring.version,
      updated_at: now,
    };
    if (o.rollout !== undefined) set.rollout = o.rollout ? JSON.stringify(o.rollout) : null;
    await trx.updateTable('rings').set(set).where('name', '=', ring.name).execute();
    await trx.insertInto('ring_history').values({
      ring: ring.name,
      at: now,
      from_version: ring.version,
      to_version: to,
      by: o.by,
      reason: o.reason,
      evidence: o.evidence === undefined ? null : JSON.stringify(o.evidence),
    }).execute();
    await trx.updateTable('delegates').set({ failed_versions: '[]' })
      .where('account_id', 'in', trx.selectFrom('accounts').select('id').where('ring', '=', ring.name)).execute();
  }

  private async note(trx: Executor, ring: RingRow, by: string, reason: string, evidence?: unknown): Promise<void> {
    await trx.insertInto('ring_history').values({
      ring: ring.name, at: this.deps.clock.now(), from_version: ring.version, to_version: ring.version, by, reason,
      evidence: evidence === undefined ? null : JSON.stringify(evidence),
    }).execute();
  }

  /** Moves a rollout only if nobody else moved it meanwhile. */
  private async casRollout(trx: Executor, ring: RingRow, next: Rollout | null): Promise<boolean> {
    let q = trx.updateTable('rings').set({ rollout: next ? JSON.stringify(next) : null, updated_at: this.deps.clock.now() }).where('name', '=', ring.name);
    q = ring.rollout === null ? q.where('rollout', 'is', null) : q.where('rollout', '=', ring.rollout);
    const r = await q.executeTakeFirst();
    return Number(r.numUpdatedRows) > 0;
  }

  private async afterChange(rings: string[]): Promise<void> {
    for (const name of rings) await this.deliverRing(name);
  }

  async set(name: string, version: string, by: string): Promise<RingView> {
    await this.requireRelease(version);
    const changed = await this.serial(() => this.db.transaction().execute(async (trx) => {
      const ring = await this.ring(name, trx);
      if (ring.version === version) return false;
      const r = ring.parsed;
      const rollout = r && ACTIVE_STATES.has(r.state)
        ? { ...r, state: 'halted' as const, since: this.deps.clock.now(), reason: `superseded: ${by} set ${name} to ${version}` }
        : undefined;
      await this.changeVersion(trx, ring, version, { by, reason: `set to ${version} by ${by}`, ...(rollout ? { rollout } : {}) });
      return true;
    }));
    if (changed) {
      this.log.info({ ring: name, version, by }, 'ring version set');
      await this.afterChange([name]);
    }
    return this.get(name);
  }

  async rollout(version: string, soakMs: number, by: string): Promise<RingView[]> {
    await this.requireRelease(version);
    const first = await this.serial(() => this.db.transaction().execute(async (trx) => {
      const rings = await this.rings(trx);
      const busy = rings.find((r) => r.parsed && ACTIVE_STATES.has(r.parsed.state));
      if (busy) {
        throw new FerryError('WRONG_STATE', `a rollout of ${busy.parsed!.version} is ${busy.parsed!.state} in ${busy.name}; roll it back (ferry ring rollback ${busy.name}) before starting another`,
          { ring: busy.name, rollout: rolloutView(busy.parsed) });
      }
      const ring = rings[0];
      if (!ring) throw new FerryError('NOT_FOUND', 'there are no rings');
      const now = this.deps.clock.now();
      const r: Rollout = {
        id: newId(), version, state: ring.paused ? 'paused' : 'soaking', since: now, startedAt: now, soakStartedAt: now, soakMs,
        previous: ring.version === version ? ring.previous_version : ring.version, by, reason: null,
      };
      for (const other of rings.slice(1)) {
        if (other.rollout !== null) await trx.updateTable('rings').set({ rollout: null }).where('name', '=', other.name).execute();
      }
      if (ring.version === version) {
        await trx.updateTable('rings').set({ rollout: JSON.stringify(r), updated_at: now }).where('name', '=', ring.name).execute();
        await this.note(trx, ring, by, `rollout of ${version} started (soak ${formatDuration(soakMs)}); ${ring.name} already runs it`);
      } else {
        await this.changeVersion(trx, ring, version, { by, reason: `rollout of ${version} started by ${by} (soak ${formatDuration(soakMs)})`, rollout: r });
      }
      return ring.name;
    }));
    this.log.info({ ring: first, version, soakMs, by }, 'rollout started');
    await this.afterChange([first]);
    return this.list();
  }

  async rollback(name: string, by: string): Promise<RingView> {
    const done = await this.serial(() => this.db.transaction().execute(async (trx) => {
      const ring = await this.ring(name, trx);
      if (!ring.previous_version) throw new FerryError('WRONG_STATE', `${name} has no previous version to roll back to`, { ring: name, version: ring.version });
      await this.rollbackIn(trx, ring, by, `rolled back to ${ring.previous_version} by ${by}`);
      // A version rolled back by hand goes no further: its rollout stops wherever it is.
      for (const other of await this.rings(trx)) {
        const r = other.parsed;
        if (other.name === name || !r || r.version !== ring.version || !ACTIVE_STATES.has(r.state)) continue;
        const halted: Rollout = { ...r, state: 'halted', since: this.deps.clock.now(), reason: `halted: ${by} rolled ${name} back from ${r.version}` };
        await trx.updateTable('rings').set({ rollout: JSON.stringify(halted) }).where('name', '=', other.name).execute();
      }
      return ring;
    }));
    this.log.warn({ ring: name, from: done.version, to: done.previous_version, by }, 'ring rolled back');
    await this.afterChange([name]);
    return this.get(name);
  }

  async rollbackAll(by: string): Promise<RingView[]> {
    const names = await this.serial(() => this.db.transaction().execute(async (trx) => {
      const rings = await this.rings(trx);
      const now = this.deps.clock.now();
      const out: string[] = [];
      for (const ring of rings) {
        if (ring.previous_version) {
          await this.rollbackIn(trx, ring, by, `rolled back to ${ring.previous_version} by ${by} (all rings)`);
          out.push(ring.name);
        } else if (ring.parsed && ACTIVE_STATES.has(ring.parsed.state)) {
          await trx.updateTable('rings').set({ rollout: JSON.stringify({ ...ring.parsed, state: 'halted', since: now, reason: `halted by ${by} (rollback of all rings)` }) })
            .where('name', '=', ring.name).execute();
        }
      }
      if (out.length === 0) throw new FerryError('WRONG_STATE', 'no ring has a previous version to roll back to');
      return out;
    }));
    this.log.warn({ rings: names, by }, 'rings rolled back');
    await this.afterChange(names);
    return this.list();
  }

  /** The ring goes back to its previous version; an active rollout there ends rolledBack. */
  private async rollbackIn(trx: Executor, ring: RingRow, by: string, reason: string, evidence?: unknown): Promise<void> {
    const r = ring.parsed;
    const rollout = r && (ACTIVE_STATES.has(r.state) || r.state === 'halted' || r.version === ring.version)
      ? { ...r, state: 'rolledBack' as const, since: this.deps.clock.now(), reason }
      : undefined;
    await this.changeVersion(trx, ring, ring.previous_version, { by, reason, evidence, previous: null, ...(rollout ? { rollout } : {}) });
  }

  async pause(name: string, by: string): Promise<RingView> {
    await this.serial(() => this.db.transaction().execute(async (trx) => {
      const ring = await this.ring(name, trx);
      if (ring.paused) throw new FerryError('WRONG_STATE', `${name} is already paused`);
      const now = this.deps.clock.now();
      const r = ring.parsed;
      const set: Partial<RingsTable> = { paused: 1, updated_at: now };
      if (r && (r.state === 'soaking' || r.state === 'advancing')) set.rollout = JSON.stringify({ ...r, state: 'paused', since: now, reason: `paused by ${by}` });
      await trx.updateTable('rings').set(set).where('name', '=', name).execute();
      await this.note(trx, ring, by, `paused by ${by}`);
    }));
    this.log.info({ ring: name, by }, 'ring paused');
    return this.get(name);
  }

  async resume(name: string, by: string): Promise<RingView> {
    await this.serial(() => this.db.transaction().execute(async (trx) => {
      const ring = await this.ring(name, trx);
      if (!ring.paused) throw new FerryError('WRONG_STATE', `${name} is not paused`);
      const now = this.deps.clock.now();
      const r = ring.parsed;
      const set: Partial<RingsTable> = { paused: 0, updated_at: now };
      // The soak starts over: what was seen before the pause was not watched to the end.
      if (r && r.state === 'paused') set.rollout = JSON.stringify({ ...r, state: 'soaking', since: now, soakStartedAt: now, reason: null });
      await trx.updateTable('rings').set(set).where('name', '=', name).execute();
      await this.note(trx, ring, by, `resumed by ${by}`);
    }));
    this.log.info({ ring: name, by }, 'ring resumed');
    this.kick();
    return this.get(name);
  }

  // ---- rollout progress ------------------------------------------------------------------

  /** One pass: every active rollout is checked, then offers are repeated where due. */
  tick(): Promise<void> {
    return this.serial(async () => {
      for (const ring of await this.rings()) {
        if (ring.parsed && ACTIVE_STATES.has(ring.parsed.state)) {
          try {
            await this.checkRing(ring);
          } catch (err) {
            this.log.error({ err, ring: ring.name }, 'rollout check failed');
          }
        }
      }
    }).then(async () => {
      await this.deliver(this.deps.sessions(), false);
    });
  }

  /** A check soon (after an event), coalescing bursts. */
  kick(): void {
    if (this.stopped || this.kickTimer) return;
    this.kickTimer = setTimeout(() => {
      this.kickTimer = null;
      this.tick().catch((err) => this.log.error({ err }, 'rollout check failed'));
    }, 50);
    this.kickTimer.unref();
  }

  /** The health of a ring's rollout: its new version against the previous one, per task kind. */
  async health(ring: string, r: Rollout): Promise<HealthVerdict & { baselineVersion: string | null }> {
    const opts = { minSample: this.deps.config.ringMinSample, alpha: this.deps.config.ringAlpha };
    const accounts = this.db.selectFrom('accounts').select('id').where('ring', '=', ring);
    const counted = () => this.db.selectFrom('tasks')
      .where('status', 'in', ['succeeded', 'failed'])
      .where((eb) => eb.or([eb('error_kind', 'is', null), eb('error_kind', 'not in', [...EXCLUDED_ERROR_KINDS])]));
    const isOld = <Q extends ReturnType<typeof counted>>(q: Q): Q =>
      (r.previous !== null ? q.where('delegate_version', '=', r.previous) : q.where('delegate_version', 'is not', null).where('delegate_version', '!=', r.version)) as Q;

    const newRows = await counted().where('account_id', 'in', accounts).where('delegate_version', '=', r.version).where('finished_at', '>=', r.startedAt)
      .select(['kind', 'status']).select((eb) => eb.fn.countAll().as('n')).groupBy(['kind', 'status']).execute();
    const oldRows = await isOld(counted().where('finished_at', '>=', r.startedAt))
      .select(['kind', 'status', 'delegate_version']).select((eb) => eb.fn.countAll().as('n')).groupBy(['kind', 'status', 'delegate_version']).execute();

    const byVersion = new Map<string, number>();
    const tally = (into: Map<string, Counts>, kind: string, status: string, n: number) => {
      const c = into.get(kind) ?? { failed: 0, total: 0 };
      c.total += n;
      if (status === 'failed') c.failed += n;
      into.set(kind, c);
    };
    const fresh = new Map<string, Counts>();
    const old = new Map<string, Counts>();
    for (const row of newRows) tally(fresh, row.kind, row.status, Number(row.n));
    for (const row of oldRows) {
      tally(old, row.kind, row.status, Number(row.n));
      if (row.delegate_version) byVersion.set(row.delegate_version, (byVersion.get(row.delegate_version) ?? 0) + Number(row.n));
    }

    const samples: KindSample[] = [];
    for (const [kind, n] of fresh) {
      let o = old.get(kind);
      let baseline: KindSample['baseline'] = 'window';
      if ((!o || o.total === 0) && n.total >= opts.minSample) {
        // No concurrent baseline: the previous version's last tasks of this kind before the rollout.
        const hist = await isOld(counted().where('kind', '=', kind).where('finished_at', '<', r.startedAt))
          .select(['status', 'delegate_version']).orderBy('finished_at', 'desc').limit(HISTORY_BASELINE).execute();
        o = { failed: hist.filter((h) => h.status === 'failed').length, total: hist.length };
        baseline = hist.length > 0 ? 'history' : 'none';
        for (const h of hist) if (h.delegate_version) byVersion.set(h.delegate_version, (byVersion.get(h.delegate_version) ?? 0) + 1);
      }
      samples.push({ kind, new: n, old: o ?? { failed: 0, total: 0 }, baseline: o && o.total > 0 ? baseline : 'none' });
    }
    const verdict = judgeHealth(samples, opts);
    const baselineVersion = r.previous ?? [...byVersion.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] ?? null;
    return { ...verdict, baselineVersion };
  }

  private async checkRing(ring: RingRow): Promise<void> {
    const r = ring.parsed!;
    const now = this.deps.clock.now();
    const h = await this.health(ring.name, r);
    const worst = h.regressed[0];
    if (worst) {
      const ev = evidenceOf(worst, { new: r.version, old: h.baselineVersion });
      const pct = (v: number | null) => (v === null ? '-' : `${(v * 100).toFixed(1)}%`);
      const reason = `automatic rollback: ${worst.kind} tasks fail more on ${r.version} (${worst.new.failed}/${worst.new.total}, ${pct(worst.new.rate)}) `
        + `than on ${h.baselineVersion ?? 'the previous version'} (${worst.old.failed}/${worst.old.total}, ${pct(worst.old.rate)}); `
        + `Fisher's exact test p=${worst.pValue} <= alpha ${worst.alpha}`;
      await this.halt(ring, h.baselineVersion, reason, { ...ev, others: h.regressed.slice(1).map((k) => evidenceOf(k, { new: r.version, old: h.baselineVersion })) });
      return;
    }
    if (r.state === 'paused') return;
    if (now - r.soakStartedAt < r.soakMs) return;

    const c = await this.countDelegates(ring.name, ring.version);
    if (c.failed > 0 && c.failed >= c.onTarget) {
      await this.halt(ring, r.previous, `automatic rollback: ${c.failed} of ${c.total} delegates of ${ring.name} failed to upgrade to ${r.version}`, { delegates: c });
      return;
    }
    const waitFor = c.upgrading + c.other;
    const rings = await this.rings();
    const next = rings.find((x) => x.ord > ring.ord);
    const waiting = waitFor > 0 ? `waiting for ${waitFor} delegate(s) of ${ring.name} to upgrade` : next?.paused ? `waiting: ${next.name} is paused` : null;
    if (waiting) {
      if (r.state !== 'advancing' || r.reason !== waiting) {
        await this.db.transaction().execute((trx) => this.casRollout(trx, ring, { ...r, state: 'advancing', since: r.state === 'advancing' ? r.since : now, reason: waiting }));
      }
      return;
    }
    const moved = await this.db.transaction().execute(async (trx) => {
      if (!(await this.casRollout(trx, ring, { ...r, state: 'completed', since: now, reason: null }))) return false;
      if (!next) return true;
      const nr: Rollout = {
        ...r, id: r.id, state: 'soaking', since: now, startedAt: now, soakStartedAt: now, reason: null,
        previous: next.version === r.version ? next.previous_version : next.version,
      };
      if (next.version === r.version) {
        await trx.updateTable('rings').set({ rollout: JSON.stringify(nr), updated_at: now }).where('name', '=', next.name).execute();
      } else {
        await this.changeVersion(trx, next, r.version, {
          by: r.by, reason: `rollout of ${r.version}: ${ring.name} passed its soak of ${formatDuration(r.soakMs)}`, rollout: nr,
          evidence: { ring: ring.name, delegates: c, health: h.kinds },
        });
      }
      return true;
    });
    if (!moved) return;
    if (next) {
      this.log.info({ version: r.version, from: ring.name, to: next.name }, 'rollout advanced');
      await this.deliverRing(next.name);
    } else {
      this.log.info({ version: r.version, ring: ring.name }, 'rollout completed');
    }
  }

  /** Halts the rollout in this ring, then rolls the ring back to `to` (when there is one). */
  private async halt(ring: RingRow, to: string | null, reason: string, evidence: unknown): Promise<void> {
    const r = ring.parsed!;
    const now = this.deps.clock.now();
    const halted: Rollout = { ...r, state: 'halted', since: now, reason };
    const ok = await this.db.transaction().execute((trx) => this.casRollout(trx, ring, halted));
    if (!ok) return;
    this.log.warn({ ring: ring.name, version: r.version, evidence }, `rollout halted: ${reason}`);
    const target = to && to !== r.version && (await this.releases.get(to)) ? to : null;
    await this.db.transaction().execute(async (trx) => {
      const cur = await this.ring(ring.name, trx);
      if (target === null || cur.version !== r.version) {
        await this.note(trx, cur, SYSTEM_ACTOR, `${reason}; no published previous version to roll back to`, evidence);
        return;
      }
      await this.changeVersion(trx, cur, target, { by: SYSTEM_ACTOR, reason, evidence, previous: null, rollout: { ...halted, state: 'rolledBack', since: now } });
    });
    if (target) {
      this.log.warn({ ring: ring.name, from: r.version, to: target }, 'ring rolled back automatically');
      await this.deliverRing(ring.name);
    } else {
      this.log.error({ ring: ring.name, version: r.version }, 'rollout halted but there is no published previous version to roll back to');
    }
  }

  // ---- delivery ----------------------------------------------------------------------------

  /** After a change of a ring's target: offer it to every session of the ring. */
  async deliverRing(ring: string): Promise<void> {
    const accounts = new Set((await this.db.selectFrom('accounts').select('id').where('ring', '=', ring).execute()).map((a) => a.id));
    const sessions = this.deps.sessions().filter((s) => accounts.has(s.accountId));
    for (const s of sessions) {
      this.helloStale.add(s.sessionId);
      this.offered.delete(s.delegateId);
    }
    await this.deliver(sessions, true);
  }

  /**
   * Sends `upgrade` to each session whose version differs from its ring's target, except
   * sessions on probation and delegates that already failed that version. `force` (an
   * event: hello, ring change) offers again; the periodic pass (`force` false) leaves
   * alone what is in progress or was offered recently.
   */
  async deliver(sessions: SessionLike[], force: boolean): Promise<number> {
    const live = sessions.filter((s) => !s.closed && s.hello && s.delegateId);
    if (live.length === 0) return 0;
    const targets = await this.db.selectFrom('accounts').innerJoin('rings', 'rings.name', 'accounts.ring')
      .leftJoin('releases', 'releases.version', 'rings.version')
      .select(['accounts.id as account_id', 'rings.name as ring', 'rings.version as version', 'releases.sha256 as sha256'])
      .where('accounts.id', 'in', [...new Set(live.map((s) => s.accountId))]).execute();
    const byAccount = new Map(targets.map((t) => [t.account_id, t]));
    const rows = await this.db.selectFrom('delegates').select(['id', 'upgrade', 'failed_versions'])
      .where('id', 'in', live.map((s) => s.delegateId)).execute();
    const byId = new Map(rows.map((d) => [d.id, d]));
    const now = this.deps.clock.now();
    let sent = 0;
    for (const s of live) {
      const t = byAccount.get(s.accountId);
      if (!t?.version || s.version === t.version || s.probation) continue;
      if (!t.sha256) {
        this.log.error({ ring: t.ring, version: t.version }, 'ring target is not a published release; not offered');
        continue;
      }
      const d = byId.get(s.delegateId);
      const failed = parseJson<string[]>(d?.failed_versions, []);
      const helloFailed = this.helloStale.has(s.sessionId) ? [] : s.hello?.failedVersions ?? [];
      if (failed.includes(t.version) || helloFailed.includes(t.version)) continue;
      if (!force) {
        const up = parseJson<{ version?: string; state?: string } | null>(d?.upgrade, null);
        const last = this.offered.get(s.delegateId);
        if (up?.version === t.version && IN_PROGRESS.has(up.state ?? '')) continue;
        if (last?.version === t.version && now - last.at < REOFFER_MS) continue;
      }
      const frame: Upgrade = { type: 'upgrade', version: t.version, sha256: t.sha256, url: `/api/v1/releases/${encodeURIComponent(t.version)}/bundle` };
      if (s.send(frame)) {
        sent++;
        this.offered.set(s.delegateId, { version: t.version, at: now });
        this.log.info({ delegateId: s.delegateId, from: s.version, to: t.version, ring: t.ring }, 'upgrade offered');
      }
    }
    return sent;
  }

  // ---- gateway events ----------------------------------------------------------------------

  async onSessionOpened(s: SessionLike): Promise<void> {
    await this.deliver([s], true);
    this.kick();
  }

  onSessionClosed(s: SessionLike): void {
    this.helloStale.delete(s.sessionId);
  }

  async onAccountRing(accountId: string): Promise<void> {
    const sessions = this.deps.sessions().filter((s) => s.accountId === accountId);
    for (const s of sessions) this.helloStale.add(s.sessionId);
    await this.deliver(sessions, true);
    this.kick();
  }

  onUpgradeStatus(s: SessionLike, f: UpgradeStatus): void {
    const fields = { delegateId: s.delegateId, version: f.version, state: f.state, ...(f.error ? { error: f.error } : {}) };
    if (FAILED.has(f.state)) this.log.warn(fields, 'delegate upgrade failed');
    else this.log.info(fields, 'delegate upgrade status');
    this.kick();
  }

  // ---- lifecycle ---------------------------------------------------------------------------

  start(): void {
    this.stopped = false;
    this.kick();
    this.timer = setInterval(() => {
      this.tick().catch((err) => this.log.error({ err }, 'rollout check failed'));
    }, this.deps.config.ringCheckMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (this.kickTimer) clearTimeout(this.kickTimer);
    this.timer = null;
    this.kickTimer = null;
    await this.chain;
  }
}
