/**
 * Group commit: the store's single writer. Small writes queued from many callers in the
 * same tick — submissions, claims, accepts, log chunks, results, delegate sessions — run
 * together in one transaction, so they cost one durable sync per batch instead of one
 * each. If a batch fails, each item is retried alone so one bad item cannot sink the
 * others; an item must therefore keep its in-memory effects until its promise resolves.
 */
import type { Kysely } from 'kysely';
import type { DB } from './schema.js';
import type { Transaction } from 'kysely';

type Trx = Transaction<DB>;
type Item = { fn: (trx: Trx) => Promise<unknown>; resolve: (v: unknown) => void; reject: (e: unknown) => void };

export class GroupCommit {
  private pending: Item[] = [];
  private running = false;
  /** batches committed (metrics, tests) */
  commits = 0;

  constructor(private readonly db: Kysely<DB>, private readonly maxBatch = 1000) {}

  run<T>(fn: (trx: Trx) => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ fn, resolve: resolve as (v: unknown) => void, reject });
      if (!this.running) {
        this.running = true;
        setImmediate(() => void this.loop());
      }
    });
  }

  private async loop(): Promise<void> {
    try {
      while (this.pending.length) {
        const batch = this.pending.splice(0, this.maxBatch);
        const results: unknown[] = [];
        try {
          await this.db.transaction().execute(async (trx) => {
            for (const it of batch) results.push(await it.fn(trx));
          });
          this.commits++;
          batch.forEach((it, i) => it.resolve(results[i]));
        } catch {
          for (const it of batch) {
            try {
              it.resolve(await this.db.transaction().execute((trx) => it.fn(trx)));
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
}
