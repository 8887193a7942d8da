/**
 * The task claim: one statement per dialect that moves chosen queued tasks to
 * `assigned` for one delegate, skipping any another server holds or already took.
 * SQLite has one writer, so a conditional UPDATE … RETURNING is the whole claim.
 * PostgreSQL: lock the candidates with FOR UPDATE SKIP LOCKED, then update them
 * (graphile-worker's getJobs shape). Candidates are picked in memory first (selector
 * and capability matching), so the statement only re-checks `status = 'queued'`.
 */
import { sql, type Kysely } from 'kysely';
import { unindexed, type DB, type Executor, type Dialect } from '../store/db.js';
import { prepare, type PreparedQuery } from '../store/prepared.js';

/** What a task.assign is built from: the claim returns it, so no second read is needed. */
export interface AssignRow {
  id: string;
  account_id: string;
  execution_id: string | null;
  attempt: number;
  spec: string;
  env: string;
  secret_names: string;
  timeout_ms: number | null;
  queued_at: number;
}

export async function claimTasks(
  db: Executor,
  dialect: Dialect,
  ids: string[],
  d: { delegateId: string; version: string; leaseExpiresAt: number; now: number },
): Promise<AssignRow[]> {
  if (ids.length === 0) return [];
  if (dialect === 'postgres') {
    const r = await sql<AssignRow>`
      with picked as (
        select id from tasks
        where id in (${sql.join(ids)}) and status = 'queued'
        order by priority desc, queue_seq
        for update skip locked
      )
      update tasks set status = 'assigned', delegate_id = ${d.delegateId}, delegate_version = ${d.version},
        lease_expires_at = ${d.leaseExpiresAt}, assigned_at = ${d.now}
      from picked where tasks.id = picked.id
      returning tasks.id, tasks.account_id, tasks.execution_id, tasks.attempt, tasks.spec, tasks.env, tasks.secret_names, tasks.timeout_ms, tasks.queued_at`.execute(db);
    return r.rows;
  }
  sqliteClaim ??= prepare(db as Kysely<DB>, (q, a: { ids: string[]; delegateId: string; version: string; leaseExpiresAt: number; now: number }) =>
    q.updateTable('tasks')
      .set({ status: 'assigned', delegate_id: a.delegateId, delegate_version: a.version, lease_expires_at: a.leaseExpiresAt, assigned_at: a.now })
      .where('id', 'in', a.ids).where(unindexed('status'), '=', 'queued')
      .returning(['id', 'account_id', 'execution_id', 'attempt', 'spec', 'env', 'secret_names', 'timeout_ms', 'queued_at']));
  return sqliteClaim.execute(db, { ids, ...d });
}

/** SQLite's claim, compiled once per number of tasks (any SQLite executor builds the same SQL). */
let sqliteClaim: PreparedQuery<{ ids: string[]; delegateId: string; version: string; leaseExpiresAt: number; now: number }, AssignRow> | undefined;
