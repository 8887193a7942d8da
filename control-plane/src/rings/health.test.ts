import { describe, expect, it } from 'vitest';
import { judgeHealth, judgeKind, type KindSample } from './health.js';

const opts = { minSample: 20, alpha: 0.01 };
const sample = (kind: string, nf: number, nt: number, of: number, ot: number, baseline: KindSample['baseline'] = 'window'): KindSample =>
  ({ kind, new: { failed: nf, total: nt }, old: { failed: of, total: ot }, baseline });

describe('the halt decision', () => {
  it('does not judge below the minimum sample, however bad it looks', () => {
    const v = judgeKind(sample('http', 19, 19, 0, 100), opts);
    expect(v.verdict).toBe('insufficient');
    expect(v.pValue).toBeNull();
    expect(judgeHealth([sample('http', 19, 19, 0, 100)], opts).healthy).toBe(true);
  });

  it('does not judge without a baseline', () => {
    expect(judgeKind(sample('http', 30, 30, 0, 0, 'none'), opts).verdict).toBe('insufficient');
  });

  it('halts on a clear regression', () => {
    const h = judgeHealth([sample('http', 12, 20, 1, 100)], opts);
    expect(h.healthy).toBe(false);
    expect(h.regressed[0]!.kind).toBe('http');
    expect(h.regressed[0]!.pValue!).toBeLessThan(0.01);
    expect(h.regressed[0]!.new.rate).toBe(0.6);
    expect(h.regressed[0]!.old.rate).toBe(0.01);
  });

  it('does not halt on equal rates, nor when the new version does better', () => {
    expect(judgeHealth([sample('shell', 5, 50, 10, 100)], opts).healthy).toBe(true);
    expect(judgeHealth([sample('shell', 0, 50, 30, 100)], opts).healthy).toBe(true);
    // a small, insignificant rise
    expect(judgeHealth([sample('shell', 3, 30, 2, 40)], opts).healthy).toBe(true);
  });

  it('attributes a regression in one kind to that kind only', () => {
    const h = judgeHealth([
      sample('shell', 2, 60, 4, 120),
      sample('http', 25, 30, 1, 90),
      sample('verify', 0, 25, 0, 50),
    ], opts);
    expect(h.healthy).toBe(false);
    expect(h.regressed.map((k) => k.kind)).toEqual(['http']);
    expect(h.kinds.find((k) => k.kind === 'shell')!.verdict).toBe('healthy');
    expect(h.kinds.find((k) => k.kind === 'verify')!.verdict).toBe('healthy');
  });

  it('respects alpha', () => {
    // p ≈ 0.0025 for 6/20 against 2/60 (SciPy)
    const s = sample('http', 6, 20, 2, 60);
    const p = judgeKind(s, opts).pValue!;
    expect(p).toBeGreaterThan(0.001);
    expect(p).toBeLessThan(0.01);
    expect(judgeKind(s, { ...opts, alpha: 0.01 }).verdict).toBe('regressed');
    expect(judgeKind(s, { ...opts, alpha: 0.001 }).verdict).toBe('healthy');
  });
});
