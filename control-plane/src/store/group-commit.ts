/**
 * Group commit: small writes queued from many callers run together in one transaction,
 * so a storm of delegate hellos costs one durable sync per batch instead of one per
 * delegate. If a batch fails, each item is retried alone so one bad item cannot sink the
 * others.
 */
import type { Store, Trx } from './db.js';

type Item = { fn: (trx: Trx) => Promise<unknown>; resolve: (v: unknown) => void; reject: (e: unknown) => void };

export class GroupCommit {
  private pending: Item[] = [];
  private running = false;

  constructor(private readonly store: Store, private readonly maxBatch = 500) {}

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
          await this.store.db.transaction().execute(async (trx) => {
            for (const it of batch) results.push(await it.fn(trx));
          });
          batch.forEach((it, i) => it.resolve(results[i]));
        } catch {
          for (const it of batch) {
            try {
              it.resolve(await this.store.db.transaction().execute((trx) => it.fn(trx)));
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
