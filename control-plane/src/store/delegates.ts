/** Delegate registry rows: one per delegate id, however often it reconnected. */
import type { Executor } from './db.js';
import { fromJson, toJson } from './db.js';
import type { Hello } from '@ferry/shared';

export interface DelegateView {
  id: string;
  name: string;
  account: string;
  version: string;
  ring: string;
  tags: string[];
  capabilities: string[];
  capacity: number;
  running: number;
  connected: boolean;
  lastSeenAt: string;
  connectedAt: string | null;
  upgrade: null | { version: string; state: string; error: string | null };
}

export async function upsertOnHello(db: Executor, h: Hello, o: { accountId: string; tokenId: string; sessionId: string; serverId: string; now: number }): Promise<void> {
  const row = {
    account_id: o.accountId,
    token_id: o.tokenId,
    name: h.name,
    version: h.version,
    tags: toJson(h.tags),
    capabilities: toJson(h.capabilities),
    capacity: h.capacity,
    running: h.running.filter((r) => !r.finished).length,
    connected: 1,
    session_id: o.sessionId,
    server_id: o.serverId,
    connected_at: o.now,
    last_seen_at: o.now,
    disconnected_at: null,
  };
  await db.insertInto('delegates').values({ id: h.delegateId, ...row, upgrade: null, failed_versions: toJson(h.failedVersions ?? []), created_at: o.now })
    .onConflict((oc) => oc.column('id').doUpdateSet(row))
    .execute();
}

export async function markDisconnected(db: Executor, delegateId: string, sessionId: string, now: number): Promise<void> {
  await db.updateTable('delegates').set({ connected: 0, disconnected_at: now, last_seen_at: now, session_id: null })
    .where('id', '=', delegateId).where('session_id', '=', sessionId).execute();
}

export async function touch(db: Executor, delegateId: string, running: number, now: number): Promise<void> {
  await db.updateTable('delegates').set({ last_seen_at: now, running }).where('id', '=', delegateId).execute();
}

export async function setUpgradeState(db: Executor, delegateId: string, upgrade: { version: string; state: string; error: string | null } | null, failedVersion?: string): Promise<void> {
  await db.updateTable('delegates').set({ upgrade: upgrade ? toJson(upgrade) : null }).where('id', '=', delegateId).execute();
  if (failedVersion) {
    const row = await db.selectFrom('delegates').select('failed_versions').where('id', '=', delegateId).executeTakeFirst();
    const list = fromJson<string[]>(row?.failed_versions, []);
    if (!list.includes(failedVersion)) list.push(failedVersion);
    await db.updateTable('delegates').set({ failed_versions: toJson(list.slice(-16)) }).where('id', '=', delegateId).execute();
  }
}

export async function listDelegates(db: Executor, accountId?: string, id?: string): Promise<DelegateView[]> {
  let q = db.selectFrom('delegates').innerJoin('accounts', 'accounts.id', 'delegates.account_id')
    .selectAll('delegates').select(['accounts.name as account_name', 'accounts.ring as account_ring'])
    .orderBy('delegates.created_at');
  if (accountId) q = q.where('delegates.account_id', '=', accountId);
  if (id) q = q.where('delegates.id', '=', id);
  const rows = await q.execute();
  return rows.map((r) => ({
    id: r.id,
    name: r.name,
    account: r.account_name,
    version: r.version,
    ring: r.account_ring,
    tags: fromJson<string[]>(r.tags, []),
    capabilities: fromJson<string[]>(r.capabilities, []),
    capacity: r.capacity,
    running: r.running,
    connected: r.connected === 1,
    lastSeenAt: new Date(Number(r.last_seen_at)).toISOString(),
    connectedAt: r.connected_at == null ? null : new Date(Number(r.connected_at)).toISOString(),
    upgrade: fromJson(r.upgrade, null),
  }));
}
