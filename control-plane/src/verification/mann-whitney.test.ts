import { describe, expect, it } from 'vitest';
import {
  exactUCdf,
  hodgesLehmann,
  mannWhitney,
  pairwiseDifferenceOrderStatistic,
} from './mann-whitney.js';
import { erfc, normalCdf, normalQuantile } from './normal.js';

/** Park–Miller minimal standard generator; products stay below 2^53, so Python's
 * `s = s * 48271 % 2147483647` produces the same stream (used for the scipy references). */
function parkMiller(seed: number): () => number {
  let s = seed;
  return () => {
    s = (s * 48271) % 2147483647;
    return s / 2147483647;
  };
}

/** Brute-force exact null distribution: enumerate every way to pick the canary's ranks. */
function bruteForceCounts(n1: number, n2: number): number[] {
  const counts = new Array<number>(n1 * n2 + 1).fill(0);
  const n = n1 + n2;
  const pick = (start: number, left: number, rankSum: number): void => {
    if (left === 0) {
      counts[rankSum - (n1 * (n1 + 1)) / 2]! += 1;
      return;
    }
    for (let r = start; r <= n - left + 1; r++) pick(r + 1, left - 1, rankSum + r);
  };
  pick(1, n1, 0);
  return counts;
}

function sortedF64(a: number[]): Float64Array {
  return Float64Array.from(a).sort();
}

function allDiffsSorted(x: number[], y: number[]): number[] {
  const d: number[] = [];
  for (const a of x) for (const b of y) d.push(a - b);
  return d.sort((p, q) => p - q);
}

describe('normal helpers', () => {
  // Reference values: scipy 1.17.1 norm.ppf; Python 3 math.erfc.
  it('quantiles and erfc match reference values', () => {
    expect(normalQuantile(0.975)).toBeCloseTo(1.959963984540054, 10);
    expect(normalQuantile(0.95)).toBeCloseTo(1.6448536269514722, 10);
    expect(normalQuantile(0.99)).toBeCloseTo(2.3263478740408408, 10);
    expect(normalQuantile(0.01)).toBeCloseTo(-2.3263478740408408, 10);
    expect(normalQuantile(1e-10)).toBeCloseTo(-6.361340902404056, 9);
    const erfcRef: Array<[number, number]> = [
      [0.1, 0.8875370839817152],
      [1, 0.15729920705028513],
      [1.99, 0.004888586800383003],
      [2, 0.004677734981047265],
      [3, 2.2090496998585438e-5],
      [6, 2.1519736712498916e-17],
      [20, 5.3958656116079005e-176],
    ];
    for (const [x, ref] of erfcRef) expect(erfc(x) / ref).toBeCloseTo(1, 11);
    expect(erfc(-1)).toBeCloseTo(2 - 0.15729920705028513, 14);
    expect(normalCdf(0)).toBe(0.5);
  });
});

describe('mannWhitney: published examples', () => {
  // scipy.stats.mannwhitneyu documentation example (ages of male and female readers,
  // after Conover / the Wikipedia worked example): U1 = 17,
  // method="exact" → p = 0.1111111111111111 (= 1/9), method="asymptotic" → p = 0.11134688653314041.
  const males = [19, 22, 16, 29, 24];
  const females = [20, 11, 17, 12];

  it('exact: U and p of the scipy documentation example', () => {
    const r = mannWhitney(males, females);
    expect(r.method).toBe('exact');
    expect(r.u).toBe(17);
    expect(r.pValue).toBeCloseTo(1 / 9, 12);
  });

  it('normal approximation: p of the scipy documentation example, and z from the formula', () => {
    const r = mannWhitney(males, females, { exactMaxProduct: 0 });
    expect(r.method).toBe('normal');
    expect(r.u).toBe(17);
    // independent: z = (U − n1n2/2 − ½) / sqrt(n1 n2 (n1+n2+1) / 12), no ties
    const z = (17 - 10 - 0.5) / Math.sqrt((5 * 4 * 10) / 12);
    expect(r.z).toBeCloseTo(z, 12);
    expect(r.pValue).toBeCloseTo(0.11134688653314041, 12);
  });

  it('the reversed comparison gives the complementary U and the same p', () => {
    const r = mannWhitney(females, males);
    expect(r.u).toBe(20 - 17);
    expect(r.pValue).toBeCloseTo(1 / 9, 12);
  });

  // Critical values of U for a two-sided test at α = 0.05 as printed in the standard
  // tables (e.g. Siegel & Castellan, Nonparametric Statistics, Table J; rechecked here by
  // brute force in Python): significant iff U ≤ U_crit.
  it.each([
    [5, 5, 2],
    [6, 9, 10],
    [8, 8, 13],
    [10, 10, 23],
    [20, 20, 127],
  ])('exact distribution reproduces the table critical value n1=%i n2=%i → %i', (n1, n2, crit) => {
    const cdf = exactUCdf(n1, n2);
    expect(2 * cdf[crit]!).toBeLessThanOrEqual(0.05);
    expect(2 * cdf[crit + 1]!).toBeGreaterThan(0.05);
  });

  it('exact distribution equals brute-force enumeration', () => {
    for (const [n1, n2] of [
      [1, 1],
      [3, 4],
      [4, 3],
      [5, 5],
      [2, 9],
      [6, 7],
    ] as const) {
      const counts = bruteForceCounts(n1, n2);
      const total = counts.reduce((a, b) => a + b, 0);
      const cdf = exactUCdf(n1, n2);
      let acc = 0;
      for (let u = 0; u <= n1 * n2; u++) {
        acc += counts[u]!;
        expect(cdf[u]).toBeCloseTo(acc / total, 12);
      }
    }
    expect(exactUCdf(3, 3)[0]).toBeCloseTo(1 / 20, 12);
  });

  // Reference: scipy 1.17.1, mannwhitneyu(canary, baseline, method="exact"), with the
  // same Park–Miller stream (seed 777: 15 baseline values r·1000, then 12 canary r·1000+150).
  it('exact p for 12 vs 15 matches scipy', () => {
    const g = parkMiller(777);
    const b = Array.from({ length: 15 }, () => g() * 1000);
    const c = Array.from({ length: 12 }, () => g() * 1000 + 150);
    const r = mannWhitney(c, b);
    expect(r.method).toBe('exact');
    expect(r.u).toBe(124);
    expect(r.pValue).toBeCloseTo(0.10280029866784478, 10);
  });

  // Reference: scipy 1.17.1, method="asymptotic", use_continuity=True.
  it('large sample with many ties (600 vs 600): U and tie-corrected p match scipy', () => {
    const g = parkMiller(12345);
    const base = Array.from({ length: 600 }, () => Math.floor(g() * 100));
    const can15 = Array.from({ length: 600 }, () => Math.floor(g() * 100 * 1.15));
    const r = mannWhitney(can15, base);
    expect(r.method).toBe('normal');
    expect(r.ties).toBe(true);
    expect(r.u).toBe(202308.5);
    expect(r.pValue / 0.00020188332289464172).toBeCloseTo(1, 9);

    // The same stream with factor 1.05: U 186343, p 0.29064609829603427.
    const g2 = parkMiller(12345);
    const base2 = Array.from({ length: 600 }, () => Math.floor(g2() * 100));
    const can05 = Array.from({ length: 600 }, () => Math.floor(g2() * 100 * 1.05));
    const r2 = mannWhitney(can05, base2);
    expect(r2.u).toBe(186343);
    expect(r2.pValue).toBeCloseTo(0.29064609829603427, 12);

    // independent check of U by the O(n1·n2) definition
    let naive = 0;
    for (const c of can15) for (const b of base) naive += c > b ? 1 : c === b ? 0.5 : 0;
    expect(r.u).toBe(naive);
  });

  it('normal approximation without ties above the exact limit (30 vs 100) matches scipy', () => {
    const g = parkMiller(4242);
    const b = Array.from({ length: 100 }, () => g() * 10);
    const c = Array.from({ length: 30 }, () => g() * 10 + 1);
    const r = mannWhitney(c, b);
    expect(r.method).toBe('normal');
    expect(r.u).toBe(2100);
    expect(r.pValue / 0.0009239643762272963).toBeCloseTo(1, 9);
  });
});

describe('Hodges-Lehmann shift and confidence interval', () => {
  it('order statistics of pairwise differences equal the brute-force sorted list', () => {
    const g = parkMiller(99);
    for (const [m, n, tieScale] of [
      [7, 9, 0],
      [40, 35, 0],
      [60, 80, 5],
      [1, 50, 0],
      [90, 3, 2],
    ] as const) {
      const x = Array.from({ length: m }, () => (tieScale ? Math.floor(g() * tieScale) : g() * 100));
      const y = Array.from({ length: n }, () => (tieScale ? Math.floor(g() * tieScale) : g() * 100 - 20));
      const all = allDiffsSorted(x, y);
      const xs = sortedF64(x);
      const ys = sortedF64(y);
      for (const k of [1, 2, Math.floor(all.length / 3), Math.ceil(all.length / 2), all.length - 1, all.length]) {
        if (k < 1) continue;
        expect(pairwiseDifferenceOrderStatistic(xs, ys, k)).toBe(all[k - 1]);
      }
      const mid = all.length % 2 ? all[(all.length - 1) / 2]! : (all[all.length / 2 - 1]! + all[all.length / 2]!) / 2;
      expect(hodgesLehmann(xs, ys)).toBe(mid);
    }
  });

  it('order statistics stay exact on large, heavily tied and zero-inflated samples', () => {
    const g = parkMiller(31337);
    const cases: Array<[number[], number[]]> = [
      [Array.from({ length: 200 }, () => Math.floor(g() * 3)), Array.from({ length: 150 }, () => Math.floor(g() * 3))],
      [Array.from({ length: 300 }, () => (g() < 0.1 ? g() : 0)), Array.from({ length: 250 }, () => (g() < 0.05 ? g() : 0))],
      [new Array<number>(120).fill(4), new Array<number>(130).fill(4)],
      [Array.from({ length: 250 }, () => g() * 1e-9 + 1), Array.from({ length: 260 }, () => g() * 1e-9 + 1)],
    ];
    for (const [x, y] of cases) {
      const all = allDiffsSorted(x, y);
      const xs = sortedF64(x);
      const ys = sortedF64(y);
      for (let t = 0; t < 25; t++) {
        const k = 1 + Math.floor(g() * all.length);
        expect(pairwiseDifferenceOrderStatistic(xs, ys, k)).toBe(all[k - 1]);
      }
      const h = all.length / 2;
      const mid = all.length % 2 ? all[(all.length - 1) / 2]! : (all[h - 1]! + all[h]!) / 2;
      expect(hodgesLehmann(xs, ys)).toBe(mid);
    }
  });

  it('scipy example: shift 7 and the exact 95% interval [D(2), D(19)] = [-1, 17]', () => {
    // exact null distribution for (5,4): P(U ≤ 1) = 2/126 ≤ 0.025 < P(U ≤ 2) = 4/126 → k = 2
    const r = mannWhitney([19, 22, 16, 29, 24], [20, 11, 17, 12]);
    const all = allDiffsSorted([19, 22, 16, 29, 24], [20, 11, 17, 12]);
    expect(r.shift).toBe(all[9]);
    expect(r.shift).toBe(7);
    expect(r.ci).toEqual([all[1], all[18]]);
    expect(r.ci).toEqual([-1, 17]);
  });

  it('the exact interval excludes 0 exactly when p ≤ 1 − confidence (duality)', () => {
    const g = parkMiller(2024);
    let significant = 0;
    for (let t = 0; t < 60; t++) {
      const n1 = 4 + (t % 9);
      const n2 = 5 + ((t * 7) % 11);
      const shift = (t % 5) * 0.4;
      const b = Array.from({ length: n2 }, () => g());
      const c = Array.from({ length: n1 }, () => g() + shift);
      for (const confidence of [0.9, 0.95, 0.98]) {
        const r = mannWhitney(c, b, { confidence });
        expect(r.method).toBe('exact');
        const excludes = r.ci[0] > 0 || r.ci[1] < 0;
        expect(excludes).toBe(r.pValue <= 1 - confidence + 1e-12);
        if (excludes) significant++;
      }
    }
    expect(significant).toBeGreaterThan(10); // the check exercised both outcomes
  });

  it('a clear shift is estimated close to the true shift, with an interval around it', () => {
    const g = parkMiller(5);
    const b = Array.from({ length: 600 }, () => 100 + 10 * (g() + g() + g() - 1.5));
    const c = Array.from({ length: 600 }, () => 108 + 10 * (g() + g() + g() - 1.5));
    const r = mannWhitney(c, b);
    expect(r.shift).toBeGreaterThan(7);
    expect(r.shift).toBeLessThan(9);
    expect(r.ci[0]).toBeGreaterThan(6);
    expect(r.ci[0]).toBeLessThan(r.shift);
    expect(r.ci[1]).toBeGreaterThan(r.shift);
    expect(r.pValue).toBeLessThan(1e-10);
  });
});

describe('mannWhitney: edge cases', () => {
  it('empty input: no test', () => {
    for (const [c, b] of [
      [[], [1, 2, 3]],
      [[1, 2, 3], []],
      [[], []],
    ] as const) {
      const r = mannWhitney(c, b);
      expect(r.method).toBe('none');
      expect(Number.isNaN(r.pValue)).toBe(true);
      expect(Number.isNaN(r.shift)).toBe(true);
      expect(r.ci).toEqual([-Infinity, Infinity]);
    }
  });

  it('single points on each side: exact, p = 1', () => {
    const r = mannWhitney([5], [3]);
    expect(r.method).toBe('exact');
    expect(r.u).toBe(1);
    expect(r.pValue).toBe(1);
    expect(r.shift).toBe(2);
    expect(r.ci).toEqual([-Infinity, Infinity]); // 95% is unreachable with one point each
  });

  it('identical series: U = n1n2/2, p = 1, shift 0', () => {
    const s = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5];
    const r = mannWhitney(s, [...s].reverse());
    expect(r.u).toBe((11 * 11) / 2);
    expect(r.pValue).toBe(1);
    expect(r.shift).toBe(0);
    expect(r.ci[0]).toBeLessThanOrEqual(0);
    expect(r.ci[1]).toBeGreaterThanOrEqual(0);
  });

  it('constant equal series (all tied): p = 1, interval [0, 0]', () => {
    const r = mannWhitney([7, 7, 7, 7], [7, 7, 7]);
    expect(r.method).toBe('normal');
    expect(r.pValue).toBe(1);
    expect(r.z).toBe(0);
    expect(r.shift).toBe(0);
    expect(r.ci).toEqual([0, 0]);
  });

  it('constant but different series: the interval is the difference', () => {
    const r = mannWhitney([6, 6, 6, 6, 6], [5, 5, 5, 5, 5]);
    expect(r.u).toBe(25);
    expect(r.shift).toBe(1);
    expect(r.ci).toEqual([1, 1]);
    expect(r.pValue).toBeLessThan(0.05);
    const down = mannWhitney([5, 5, 5, 5, 5], [6, 6, 6, 6, 6]);
    expect(down.u).toBe(0);
    expect(down.ci).toEqual([-1, -1]);
  });

  it('NaN and infinities are dropped', () => {
    const r = mannWhitney([19, NaN, 22, 16, Infinity, 29, 24], [20, 11, NaN, 17, -Infinity, 12]);
    expect(r.n1).toBe(5);
    expect(r.n2).toBe(4);
    expect(r.u).toBe(17);
    expect(r.pValue).toBeCloseTo(1 / 9, 12);
  });

  it('rejects a confidence outside (0, 1)', () => {
    expect(() => mannWhitney([1], [2], { confidence: 1 })).toThrow(RangeError);
  });
});
