/**
 * Group commit: the store's single writer. Small writes queued from many callers in the
 * same tick — submissions, claims, accepts, log chunks, results, delegate sessions — run
 * together in one transaction, so they cost one durable sync per batch instead of one
 * each. If a batch fails, each item is retried alone so one bad item cannot sink the
 * others; an item must therefore keep its in-memory effects until its promise resolves.
 *
 * An item's promise resolves only once its commit is durable (synced to disk), so what a
 * caller does next — acknowledge a chunk, send an assignment, answer a request — never
 * gets ahead of the disk.
 *
 * SQLite: the commit itself is not synced in the event loop. The writer commits with
 * `synchronous = NORMAL` (the WAL frames reach the OS) and then fdatasyncs the WAL file on
 * the thread pool; items resolve when a sync that started after their commit completes.
 * Meanwhile the loop goes on reading frames and the next batch commits, so a sync covers
 * several batches and never blocks the process. Every other statement keeps
 * `synchronous = FULL`. (With synchronous = FULL, 20–25 % of the server's time under load
 * was spent blocked in fsync.) PostgreSQL: a plain transaction; its commit is durable.
 *
 * A quiet writer (nothing committed or synced for QUIET_MS, nothing else queued) starts
 * its batch at once and syncs in the event loop instead: one lone commit gains nothing from the thread pool, and the two thread
 * hand-offs cost more than the sync blocks (dispatch latency p99 5.1–5.9 ms instead of
 * 6.4–7.7 ms on the 2-core benchmark machine). Under load the syncs run back to back and
 * stay on the thread pool.
 */
import { fdatasyncSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { CompiledQuery, sql, type Kysely } from 'kysely';
import type { DB } from './schema.js';

/** What an item may run its statements on: the writer's connection, inside its transaction. */
export type WriterTrx = Kysely<DB>;

type Item = {
  fn: (trx: WriterTrx) => Promise<unknown>;
  onCommit: ((v: unknown) => void) | undefined;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
};
type Settle = { ok: () => void; fail: (err: unknown) => void };

const BEGIN = CompiledQuery.raw('begin');
const COMMIT = CompiledQuery.raw('commit');
const ROLLBACK = CompiledQuery.raw('rollback');

export interface GroupCommitOptions {
  /** SQLite: the database file's WAL, synced off the event loop (absent for :memory: and PostgreSQL) */
  walFile?: string;
  /** SQLite: sets `synchronous` on the connection directly (no statement round trip) */
  setSynchronous?: (mode: 'normal' | 'full') => void;
  maxBatch?: number;
}

/** a writer whose previous commit (sync) ended longer ago than this is quiet (ms) */
const QUIET_MS = 5;

export class GroupCommit {
  private pending: Item[] = [];
  private running = false;
  /** batches committed (metrics, tests) */
  commits = 0;
  /** WAL syncs done (metrics, tests) */
  syncs = 0;
  /** of which in the event loop (quiet writer) */
  inlineSyncs = 0;
  private lastSyncEnd = 0;
  private lastCommitEnd = 0;
  private wal: FileHandle | null = null;
  /** committed batches waiting for a sync that starts after their commit */
  private unsynced: Settle[] = [];
  private syncing = false;
  private readonly maxBatch: number;
  /** undo callbacks of the transaction being run (onRollback) */
  private rollbacks: Array<() => void> | null = null;

  constructor(private readonly db: Kysely<DB>, private readonly opts: GroupCommitOptions = {}) {
    this.maxBatch = opts.maxBatch ?? 1000;
  }

  /**
   * Runs fn in the next batch. The promise resolves once the commit is durable;
   * `onCommit` runs as soon as it is committed (visible to later statements, not yet
   * synced), for in-memory state that the next batch must see.
   */
  run<T>(fn: (trx: WriterTrx) => Promise<T>, onCommit?: (v: T) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ fn: fn as (trx: WriterTrx) => Promise<unknown>, onCommit: onCommit as ((v: unknown) => void) | undefined, resolve: resolve as (v: unknown) => void, reject });
      if (!this.running) {
        this.running = true;
        // A busy writer waits for the end of the loop turn so that everything read in it
        // joins one batch; a quiet one starts at once.
        if (performance.now() - this.lastCommitEnd > QUIET_MS) queueMicrotask(() => void this.loop());
        else setImmediate(() => void this.loop());
      }
    });
  }

  /**
   * Only while an item runs: `undo` runs if the transaction the item is in rolls back, so
   * an item may change in-memory state at once (e.g. reserve a delegate's slots) and
   * still be retried cleanly.
   */
  onRollback(undo: () => void): void {
    if (!this.rollbacks) throw new Error('onRollback is only valid inside a writer item');
    this.rollbacks.push(undo);
  }

  /** Resolves when everything queued so far is committed and synced. */
  async idle(): Promise<void> {
    await this.run(async () => undefined);
  }

  async close(): Promise<void> {
    await this.idle();
    await this.wal?.close().catch(() => undefined);
    this.wal = null;
  }

  private async loop(): Promise<void> {
    try {
      while (this.pending.length) {
        const batch = this.pending.splice(0, this.maxBatch);
        const results: unknown[] = [];
        try {
          await this.transaction(async (trx) => {
            for (const it of batch) results.push(await it.fn(trx));
          });
          this.commits++;
          this.lastCommitEnd = performance.now();
          batch.forEach((it, i) => it.onCommit?.(results[i]));
          this.afterCommit(() => batch.forEach((it, i) => it.resolve(results[i])), (err) => batch.forEach((it) => it.reject(err)));
        } catch {
          for (const it of batch) {
            try {
              let r: unknown;
              await this.transaction(async (trx) => { r = await it.fn(trx); });
              it.onCommit?.(r);
              this.afterCommit(() => it.resolve(r), (err) => it.reject(err));
            } catch (err) {
              it.reject(err);
            }
          }
        }
      }
    } finally {
      this.running = false;
    }
  }

  private async transaction(body: (trx: WriterTrx) => Promise<void>): Promise<void> {
    const undo: Array<() => void> = [];
    this.rollbacks = undo;
    try {
      await this.commitOnce(body);
    } catch (err) {
      for (const u of undo.reverse()) u();
      throw err;
    } finally {
      this.rollbacks = null;
    }
  }

  private async commitOnce(body: (trx: WriterTrx) => Promise<void>): Promise<void> {
    if (this.opts.walFile === undefined) {
      await this.db.transaction().execute((trx) => body(trx));
      return;
    }
    // One reserved connection: nothing else runs between the pragma, the transaction and
    // the pragma's reset.
    await this.db.connection().execute(async (conn) => {
      const setSync = async (mode: 'normal' | 'full'): Promise<void> => {
        if (this.opts.setSynchronous) this.opts.setSynchronous(mode);
        else await sql.raw(`pragma synchronous = ${mode}`).execute(conn);
      };
      await setSync('normal');
      try {
        await conn.executeQuery(BEGIN);
        try {
          await body(conn);
          await conn.executeQuery(COMMIT);
        } catch (err) {
          await conn.executeQuery(ROLLBACK).catch(() => undefined);
          throw err;
        }
      } finally {
        await setSync('full');
      }
    });
  }

  private afterCommit(ok: () => void, fail: (err: unknown) => void): void {
    if (this.opts.walFile === undefined) {
      ok();
      return;
    }
    this.unsynced.push({ ok, fail });
    if (!this.syncing) void this.syncLoop();
  }

  /** fdatasyncs the WAL until no committed batch waits; each sync covers the batches committed before it started. */
  private async syncLoop(): Promise<void> {
    this.syncing = true;
    try {
      while (this.unsynced.length) {
        const covered = this.unsynced;
        this.unsynced = [];
        try {
          this.wal ??= await open(this.opts.walFile!, 'r+');
          if (this.pending.length === 0 && performance.now() - this.lastSyncEnd > QUIET_MS) {
            fdatasyncSync(this.wal.fd);
            this.inlineSyncs++;
          } else {
            await this.wal.datasync();
          }
          this.lastSyncEnd = performance.now();
          this.syncs++;
          for (const c of covered) c.ok();
        } catch (err) {
          for (const c of covered) c.fail(err);
        }
      }
    } finally {
      this.syncing = false;
    }
  }
}
