import { describe, expect, it } from 'vitest';
import { Backoff } from './backoff.js';
import { RateLimiter } from './rate-limiter.js';

describe('Backoff (full jitter)', () => {
  it('stays within [floor, min(cap, base*2^n)] and grows its ceiling to the cap', () => {
    const b = new Backoff({ baseMs: 500, maxMs: 30_000 });
    const ceilings: number[] = [];
    for (let n = 0; n < 12; n++) {
      const ceiling = b.ceiling();
      ceilings.push(ceiling);
      const d = b.next();
      expect(d).toBeGreaterThanOrEqual(100);
      expect(d).toBeLessThanOrEqual(Math.max(100, ceiling));
    }
    expect(ceilings.slice(0, 4)).toEqual([500, 1000, 2000, 4000]);
    expect(ceilings.at(-1)).toBe(30_000);
    for (let i = 0; i < 1000; i++) expect(b.next()).toBeLessThanOrEqual(30_000);
  });

  it('spreads delays over the whole window (full jitter, not equal jitter)', () => {
    const b = new Backoff({ baseMs: 1000, maxMs: 10_000 });
    for (let i = 0; i < 10; i++) b.next();
    const samples = Array.from({ length: 2000 }, () => b.next());
    const lowQuarter = samples.filter((d) => d < 2500).length / samples.length;
    const highQuarter = samples.filter((d) => d > 7500).length / samples.length;
    expect(lowQuarter).toBeGreaterThan(0.15);
    expect(highQuarter).toBeGreaterThan(0.15);
    expect(new Set(samples).size).toBeGreaterThan(500);
  });

  it('never hands out a zero delay, even when the dice say 0', () => {
    const b = new Backoff({ baseMs: 500, maxMs: 30_000, random: () => 0 });
    for (let i = 0; i < 50; i++) expect(b.next()).toBeGreaterThan(0);
    const tiny = new Backoff({ baseMs: 1, maxMs: 5, random: () => 0 });
    expect(tiny.next()).toBeGreaterThanOrEqual(1);
  });

  it('resets, restores and retries slowly at the cap for fatal refusals', () => {
    const b = new Backoff({ baseMs: 100, maxMs: 8000, random: () => 0.999 });
    b.next(); b.next(); b.next();
    expect(b.ceiling()).toBe(800);
    const saved = b.attempts;
    b.reset();
    expect(b.ceiling()).toBe(100);
    b.restore(saved);
    expect(b.ceiling()).toBe(800);
    const slow = b.slow();
    expect(slow).toBeGreaterThanOrEqual(4000);
    expect(slow).toBeLessThanOrEqual(8000);
  });
});

describe('RateLimiter', () => {
  it('allows a burst of one second, then a steady rate', () => {
    let now = 0;
    const r = new RateLimiter(10, () => now);
    for (let i = 0; i < 10; i++) expect(r.take()).toBe(0);
    const wait = r.take();
    expect(wait).toBeGreaterThan(0);
    expect(wait).toBeLessThanOrEqual(100);
    now += 100;
    expect(r.take()).toBe(0);
  });
});
