/**
 * Exponential backoff with full jitter: delay = random(0, min(cap, base * 2^n)).
 * A small floor keeps even the luckiest draw from turning into a tight reconnect loop.
 */
export interface BackoffOptions {
  baseMs: number;
  maxMs: number;
  /** lowest delay ever returned; default min(100, baseMs) */
  floorMs?: number;
  /** injectable for tests; returns [0, 1) */
  random?: () => number;
}

export class Backoff {
  private attempt = 0;
  private readonly floorMs: number;
  private readonly random: () => number;

  constructor(private readonly opts: BackoffOptions) {
    this.floorMs = Math.max(1, opts.floorMs ?? Math.min(100, opts.baseMs));
    this.random = opts.random ?? Math.random;
  }

  /** The number of delays handed out since the last reset. */
  get attempts(): number {
    return this.attempt;
  }

  /** The ceiling of the next delay. */
  ceiling(): number {
    // 2^n overflows to Infinity for large n; min() keeps that harmless.
    return Math.min(this.opts.maxMs, this.opts.baseMs * 2 ** Math.min(this.attempt, 60));
  }

  next(): number {
    const ceiling = this.ceiling();
    this.attempt += 1;
    return Math.max(this.floorMs, Math.floor(this.random() * ceiling));
  }

  /** Slow retry for errors an operator must fix (revoked token): between cap/2 and cap. */
  slow(): number {
    this.attempt += 1;
    const cap = this.opts.maxMs;
    return Math.max(this.floorMs, Math.floor(cap / 2 + this.random() * (cap / 2)));
  }

  reset(): void {
    this.attempt = 0;
  }

  /** Restores a counter saved earlier (a session that flapped does not earn a reset). */
  restore(attempts: number): void {
    this.attempt = Math.max(0, attempts);
  }
}
