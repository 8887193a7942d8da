/**
 * Fisher's exact test for a 2x2 table, one-sided ("is the first row's rate greater?").
 *
 *                 failed   succeeded
 *   new version     a         b
 *   old version     c         d
 *
 * With the margins fixed, the count `a` follows a hypergeometric distribution under the
 * null hypothesis (both versions fail at the same rate); the p-value is P(X >= a).
 * Computed in log space from exact log-factorials, then summed by the pmf's ratio
 * recurrence, so it stays accurate for tables of many thousand tasks.
 */

const LOG_FACT: number[] = [0];

/** ln(n!) — exact sums up to 4096 (cached), Stirling's series beyond (error < 1e-15 there). */
export function logFactorial(n: number): number {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`logFactorial: ${n}`);
  if (n < 4096) {
    for (let i = LOG_FACT.length; i <= n; i++) LOG_FACT.push(LOG_FACT[i - 1]! + Math.log(i));
    return LOG_FACT[n]!;
  }
  const x = n + 1;
  return (x - 0.5) * Math.log(x) - x + 0.5 * Math.log(2 * Math.PI) + 1 / (12 * x) - 1 / (360 * x ** 3) + 1 / (1260 * x ** 5);
}

const logChoose = (n: number, k: number): number => logFactorial(n) - logFactorial(k) - logFactorial(n - k);

/**
 * One-sided p-value that the first row has the larger share in the first column:
 * P(X >= a) for X ~ Hypergeometric(N = a+b+c+d, K = a+c, n = a+b).
 */
export function fisherGreater(a: number, b: number, c: number, d: number): number {
  for (const v of [a, b, c, d]) if (!Number.isInteger(v) || v < 0) throw new RangeError(`fisherGreater: counts must be integers >= 0, got ${[a, b, c, d].join(',')}`);
  const n1 = a + b;
  const k = a + c;
  const n = a + b + c + d;
  const hi = Math.min(n1, k);
  if (n === 0 || n1 === 0 || k === 0 || k === n || n1 === n) return 1;
  // pmf(x) = C(K, x) C(N-K, n1-x) / C(N, n1)
  const logDen = logChoose(n, n1);
  let p = Math.exp(logChoose(k, a) + logChoose(n - k, n1 - a) - logDen);
  let sum = p;
  for (let x = a; x < hi; x++) {
    // pmf(x+1)/pmf(x) = (K-x)(n1-x) / ((x+1)(N-K-n1+x+1))
    p *= ((k - x) * (n1 - x)) / ((x + 1) * (n - k - n1 + x + 1));
    sum += p;
    if (p < sum * 1e-17) break;
  }
  return Math.min(1, sum);
}
