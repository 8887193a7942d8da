/**
 * The task claim: one statement per dialect that moves chosen queued tasks to
 * `assigned` for one delegate, skipping any another server holds or already took.
 * SQLite has one writer, so a conditional UPDATE … RETURNING is the whole claim.
 * PostgreSQL: lock the candidates with FOR UPDATE SKIP LOCKED, then update them
 * (graphile-worker's getJobs shape). Candidates are picked in memory first (selector
 * and capability matching), so the statement only re-checks `status = 'queued'`.
 */
import { sql } from 'kysely';
import type { Executor, Dialect } from '../store/db.js';

export interface ClaimedRow {
  id: string;
  attempt: number;
  queued_at: number;
}

export async function claimTasks(
  db: Executor,
  dialect: Dialect,
  ids: string[],
  d: { delegateId: string; version: string; leaseExpiresAt: number; now: number },
): Promise<ClaimedRow[]> {
  if (ids.length === 0) return [];
  if (dialect === 'postgres') {
    const r = await sql<ClaimedRow>`
      with picked as (
        select id from tasks
        where id in (${sql.join(ids)}) and status = 'queued'
        order by priority desc, queue_seq
        for update skip locked
      )
      update tasks set status = 'assigned', delegate_id = ${d.delegateId}, delegate_version = ${d.version},
        lease_expires_at = ${d.leaseExpiresAt}, assigned_at = ${d.now}
      from picked where tasks.id = picked.id
      returning tasks.id, tasks.attempt, tasks.queued_at`.execute(db);
    return r.rows;
  }
  return db.updateTable('tasks')
    .set({ status: 'assigned', delegate_id: d.delegateId, delegate_version: d.version, lease_expires_at: d.leaseExpiresAt, assigned_at: d.now })
    .where('id', 'in', ids).where('status', '=', 'queued')
    .returning(['id', 'attempt', 'queued_at'])
    .execute();
}
