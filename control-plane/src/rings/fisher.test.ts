import { describe, expect, it } from 'vitest';
import { fisherGreater, logFactorial } from './fisher.js';

describe('fisherGreater (one-sided Fisher exact test)', () => {
  it('gives the lady tasting tea p-value', () => {
    // Fisher, The Design of Experiments (1935), ch. 2: 8 cups, 4 of each kind, 3 of 4
    // right. P(X >= 3) = (C(4,3)C(4,1) + C(4,4)C(4,0)) / C(8,4) = 17/70; R's
    // fisher.test(matrix(c(3,1,1,3), 2), alternative = "greater") prints p-value = 0.2429.
    expect(fisherGreater(3, 1, 1, 3)).toBeCloseTo(17 / 70, 12);
    expect(fisherGreater(4, 0, 0, 4)).toBeCloseTo(1 / 70, 12);
  });

  it('matches SciPy fisher_exact(table, alternative="greater")', () => {
    // reference values from scipy.stats.fisher_exact 1.17.1
    const cases: Array<[[number, number, number, number], number]> = [
      [[1, 9, 11, 3], 0.9999663480953022],
      [[11, 3, 1, 9], 0.0013797280926100416],
      [[10, 20, 1, 49], 0.00014859000143169175],
      [[8, 12, 1, 99], 1.2207571244911732e-06],
      [[40, 60, 5, 95], 8.125346506572557e-10],
      [[500, 500, 400, 600], 4.226859837242813e-06],
      [[0, 20, 5, 95], 1.0],
      [[2, 18, 10, 190], 0.2989367671542621],
    ];
    for (const [[a, b, c, d], p] of cases) {
      const got = fisherGreater(a, b, c, d);
      expect(Math.abs(got - p) / p, `[[${a},${b}],[${c},${d}]]: ${got} vs ${p}`).toBeLessThan(1e-9);
    }
  });

  it('is 1 for degenerate tables and refuses bad counts', () => {
    expect(fisherGreater(0, 0, 0, 0)).toBe(1);
    expect(fisherGreater(0, 10, 0, 10)).toBe(1);
    expect(fisherGreater(5, 0, 5, 0)).toBe(1);
    expect(() => fisherGreater(-1, 1, 1, 1)).toThrow(RangeError);
    expect(() => fisherGreater(1.5, 1, 1, 1)).toThrow(RangeError);
  });

  it('log-factorials agree across the exact/Stirling boundary', () => {
    let exact = logFactorial(4095);
    exact += Math.log(4096);
    expect(Math.abs(logFactorial(4096) - exact)).toBeLessThan(1e-9);
    expect(logFactorial(10)).toBeCloseTo(Math.log(3628800), 12);
  });
});
