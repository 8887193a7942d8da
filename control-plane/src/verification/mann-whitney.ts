/**
 * Two-sided Mann-Whitney U test (Wilcoxon rank-sum test) with a Hodges-Lehmann location
 * shift estimate and its distribution-free confidence interval. Pure, no I/O.
 *
 * Conventions: `canary` is the experiment sample (size n1), `baseline` the control (n2).
 * U is the canary's statistic: U = #{(c, b) : c > b} + ½·#{(c, b) : c = b}, i.e. the
 * canary rank sum minus n1(n1+1)/2. U near n1·n2 means the canary tends to be higher.
 * The shift is "canary − baseline".
 *
 * p-value
 * - Exact, when there are no ties and n1·n2 ≤ {@link EXACT_MAX_PRODUCT} (covers 50×50,
 *   20×125, 3×833): the null distribution of U is the coefficient list of the Gaussian
 *   binomial [n1+n2 choose n1]_q, built with the product formula
 *   ∏_{i=1..m} (1 − q^{M+i}) / (1 − q^i) (m = min(n1,n2), M = max) — the same counts as the
 *   classic recursion f(n1,n2,u) = f(n1−1,n2,u−n2) + f(n1,n2−1,u), in O(m·n1·n2).
 *   Two-sided p = min(1, 2·min(P(U ≤ u), P(U ≥ u))) (as scipy's `method="exact"`).
 * - Otherwise the normal approximation with tie correction and continuity correction:
 *   μ = n1n2/2, σ² = n1n2/12 · ((N+1) − Σ(t³−t)/(N(N−1))), z = (U − μ ∓ ½)/σ,
 *   p = 2·P(Z > |z|) (as scipy's `method="asymptotic"`, R's `wilcox.test(correct=TRUE)`).
 *   When every value is tied σ = 0 and p = 1.
 *
 * Location shift and confidence interval (what Kayenta classifies on)
 * - Estimate: the Hodges-Lehmann estimator, the median of all n1·n2 differences c − b.
 * - Interval at level `confidence` (Moses / Lehmann): [D(k), D(n1n2+1−k)] where D(i) is the
 *   i-th smallest pairwise difference and k−1 is the largest u with P(U ≤ u) ≤ α/2, taken
 *   from the exact null distribution when the p-value is exact and from the normal
 *   approximation with continuity correction otherwise. This is the interval R's
 *   `wilcox.test(conf.int=TRUE)` returns in its exact branch. It is dual to the test: it
 *   excludes 0 exactly when the (exact) two-sided p ≤ α. When the samples are too small to
 *   reach the confidence at all (k < 1) the interval is (−∞, +∞).
 * - Kayenta's `MannWhitney` (a Scala port of R's non-exact branch) finds the interval and
 *   estimate by root-finding the standardized statistic over the shift. Ferry uses order
 *   statistics of the pairwise differences instead: identical in the exact case, within
 *   one order statistic of R/Kayenta in the asymptotic case, and it never fails on
 *   all-tied data (Kayenta throws there and adds Gaussian noise beforehand).
 * - The order statistics are found without materialising the n1·n2 differences (360,000
 *   for 600×600 points): a sampled selection over the implicit sorted matrix
 *   D[i][j] = c(i) − b(n2−1−j), O(n1 + n2) per step and a handful of steps per order
 *   statistic (see {@link pairwiseDifferenceOrderStatistic}); the pivots come from a seeded
 *   PRNG, so results are deterministic.
 *
 * Edge cases: non-finite values (NaN, ±Infinity) are dropped; an empty sample gives
 * `method: 'none'`, u = 0, pValue = NaN, shift = NaN and ci = (−∞, +∞). A single point on
 * each side is a valid exact test (p = 1).
 */

import { erfc, normalQuantile } from './normal.js';

/** Largest n1·n2 for which the exact null distribution is used (when there are no ties). */
export const EXACT_MAX_PRODUCT = 2500;

export interface MannWhitneyOptions {
  /** Confidence level of the shift interval, in (0, 1). Default 0.95. */
  confidence?: number;
  /** Override {@link EXACT_MAX_PRODUCT}; 0 forces the normal approximation. */
  exactMaxProduct?: number;
}

export interface MannWhitneyResult {
  /** Finite points used: canary (n1) and baseline (n2). */
  n1: number;
  n2: number;
  /** U statistic of the canary sample. */
  u: number;
  /** Two-sided p-value; NaN when a sample is empty. */
  pValue: number;
  /** Standardized statistic (normal approximation only); positive = canary higher. */
  z?: number;
  method: 'exact' | 'normal' | 'none';
  /** Whether any value occurs more than once in the pooled sample. */
  ties: boolean;
  /** Hodges-Lehmann estimate of the shift canary − baseline; NaN when a sample is empty. */
  shift: number;
  /** Confidence interval of the shift; (−∞, +∞) when unattainable or a sample is empty. */
  ci: [number, number];
  confidence: number;
}

function finiteSorted(values: readonly number[]): Float64Array {
  let n = 0;
  for (const v of values) if (Number.isFinite(v)) n++;
  const out = new Float64Array(n);
  let i = 0;
  for (const v of values) if (Number.isFinite(v)) out[i++] = v;
  return out.sort();
}

const distCache = new Map<string, Float64Array>();
const DIST_CACHE_MAX = 64;

/**
 * Exact null distribution of U for sample sizes n1, n2 without ties: element u is
 * P(U ≤ u), u = 0..n1·n2. Results are memoised (a bounded cache).
 */
export function exactUCdf(n1: number, n2: number): Float64Array {
  const key = n1 <= n2 ? `${n1},${n2}` : `${n2},${n1}`;
  const cached = distCache.get(key);
  if (cached) return cached;
  const m = Math.min(n1, n2);
  const big = Math.max(n1, n2);
  const size = n1 * n2 + 1;
  const c = new Float64Array(size);
  c[0] = 1;
  // c holds [big+i choose i]_q after step i; its degree is i·big.
  for (let i = 1; i <= m; i++) {
    const deg = i * big;
    const shift = big + i;
    // multiply by (1 − q^shift), descending so each term uses the old value
    for (let u = deg; u >= shift; u--) c[u] = c[u]! - c[u - shift]!;
    // divide by (1 − q^i): running sums with stride i
    for (let u = i; u <= deg; u++) c[u] = c[u]! + c[u - i]!;
  }
  let total = 0;
  for (let u = 0; u < size; u++) total += c[u]!;
  let acc = 0;
  for (let u = 0; u < size; u++) {
    acc += c[u]!;
    c[u] = Math.min(1, acc / total);
  }
  c[size - 1] = 1;
  if (distCache.size >= DIST_CACHE_MAX) distCache.clear();
  distCache.set(key, c);
  return c;
}

/** Deterministic PRNG (mulberry32) for pivot choice; keeps the module pure and repeatable. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The k-th smallest (1-based) of the n1·n2 differences x[i] − y[j], for ascending sorted x
 * and y, without materialising them.
 *
 * Row i of the implicit matrix is D[i][j] = x[i] − y[n−1−j], ascending in j and in i. Each
 * row keeps an active column range [lo, hi): everything left of it ranks below k,
 * everything from hi on ranks above. A step draws a small random sample of active
 * elements, takes two pivots around the target's expected position (Floyd–Rivest), counts
 * per row the differences below/at each pivot with a two-pointer sweep (O(n1 + n2)) and
 * narrows the ranges — usually to a few percent per step. When that makes no progress
 * (heavy ties) a single random pivot is used, which always removes its value. The last
 * few thousand candidates are sorted.
 */
export function pairwiseDifferenceOrderStatistic(x: Float64Array, y: Float64Array, k: number): number {
  const m = x.length;
  const n = y.length;
  const total = m * n;
  if (total === 0 || !(k >= 1 && k <= total)) return Number.NaN;
  const lo = new Int32Array(m);
  const hi = new Int32Array(m).fill(n);
  const ltA = new Int32Array(m);
  const leB = new Int32Array(m);
  const cum = new Float64Array(m + 1); // prefix sums of active widths, for sampling
  const SAMPLE = 128;
  const sample = new Float64Array(SAMPLE);
  const rnd = mulberry32(0x9e3779b9 ^ Math.imul(k, 0x2c1b3c6d) ^ total);
  let active = total;
  let below = 0;
  const CUTOFF = Math.max(256, m + n);

  // Counts per row of differences < a (into ltA) and ≤ b (into leB); returns the totals.
  const count = (a: number, b: number): [number, number] => {
    let ja = n;
    let jb = n;
    let sa = 0;
    let sb = 0;
    for (let i = 0; i < m; i++) {
      const xi = x[i]!;
      while (ja > 0 && xi - y[n - ja]! >= a) ja--;
      while (jb > 0 && xi - y[n - jb]! > b) jb--;
      ltA[i] = ja;
      leB[i] = jb;
      sa += ja;
      sb += jb;
    }
    return [sa, sb];
  };
  const pick = (r: number): number => {
    // the r-th active element (0-based) in row-major order; binary search over cum
    let a = 0;
    let b = m - 1;
    while (a < b) {
      const mid = (a + b) >> 1;
      if (cum[mid + 1]! <= r) a = mid + 1;
      else b = mid;
    }
    const j = lo[a]! + (r - cum[a]!);
    return x[a]! - y[n - 1 - j]!;
  };
  const recount = (): void => {
    active = 0;
    below = 0;
    for (let i = 0; i < m; i++) {
      if (hi[i]! < lo[i]!) hi[i] = lo[i]!;
      cum[i] = active;
      active += hi[i]! - lo[i]!;
      below += lo[i]!;
    }
    cum[m] = active;
  };
  recount();

  while (active > CUTOFF) {
    const before = active;
    // Two sampled pivots around the target's expected position.
    for (let s = 0; s < SAMPLE; s++) sample[s] = pick(Math.floor(rnd() * active));
    sample.sort();
    const pos = ((k - below) / active) * SAMPLE;
    const spread = Math.sqrt(SAMPLE);
    const pA = sample[Math.max(0, Math.floor(pos - spread))]!;
    const pB = sample[Math.min(SAMPLE - 1, Math.ceil(pos + spread))]!;
    const [cA, cB] = count(pA, pB);
    if (k <= cA) {
      for (let i = 0; i < m; i++) if (ltA[i]! < hi[i]!) hi[i] = ltA[i]!;
    } else if (k > cB) {
      for (let i = 0; i < m; i++) if (leB[i]! > lo[i]!) lo[i] = leB[i]!;
    } else {
      if (pA === pB) return pA;
      for (let i = 0; i < m; i++) {
        if (ltA[i]! > lo[i]!) lo[i] = ltA[i]!;
        if (leB[i]! < hi[i]!) hi[i] = leB[i]!;
      }
    }
    recount();
    if (active < before || active <= CUTOFF) continue;
    // No progress (ties): one random pivot; it always removes every copy of its value.
    const p = pick(Math.floor(rnd() * active));
    const [cLT, cLE] = count(p, p);
    if (k <= cLT) {
      for (let i = 0; i < m; i++) if (ltA[i]! < hi[i]!) hi[i] = ltA[i]!;
    } else if (k > cLE) {
      for (let i = 0; i < m; i++) if (leB[i]! > lo[i]!) lo[i] = leB[i]!;
    } else {
      return p;
    }
    recount();
  }
  const rest = new Float64Array(active);
  let r = 0;
  for (let i = 0; i < m; i++) {
    const xi = x[i]!;
    for (let j = lo[i]!; j < hi[i]!; j++) rest[r++] = xi - y[n - 1 - j]!;
  }
  rest.sort();
  return rest[k - 1 - below]!;
}

/**
 * The (k+1)-th smallest difference given v = the k-th (sorted inputs): v again when more
 * than k differences are ≤ v, else the smallest difference above v. O(n1 + n2).
 */
function nextDifference(x: Float64Array, y: Float64Array, k: number, v: number): number {
  const m = x.length;
  const n = y.length;
  let j = n;
  let le = 0;
  let next = Number.POSITIVE_INFINITY;
  for (let i = 0; i < m; i++) {
    const xi = x[i]!;
    while (j > 0 && xi - y[n - j]! > v) j--;
    le += j;
    if (j < n) {
      const d = xi - y[n - 1 - j]!;
      if (d < next) next = d;
    }
  }
  return le > k ? v : next;
}

/** Hodges-Lehmann estimate: the median of the pairwise differences x − y (sorted inputs). */
export function hodgesLehmann(x: Float64Array, y: Float64Array): number {
  const total = x.length * y.length;
  if (total === 0) return Number.NaN;
  if (total % 2 === 1) return pairwiseDifferenceOrderStatistic(x, y, (total + 1) / 2);
  const h = total / 2;
  const a = pairwiseDifferenceOrderStatistic(x, y, h);
  return (a + nextDifference(x, y, h, a)) / 2;
}

/**
 * Two-sided Mann-Whitney U test of `canary` against `baseline`, with the Hodges-Lehmann
 * shift (canary − baseline) and its confidence interval. See the module comment.
 */
export function mannWhitney(
  canary: readonly number[],
  baseline: readonly number[],
  options: MannWhitneyOptions = {},
): MannWhitneyResult {
  return mannWhitneySorted(finiteSorted(canary), finiteSorted(baseline), options);
}

/**
 * {@link mannWhitney} for inputs that are already finite and sorted ascending (the judge
 * sorts once for its own statistics and hands the arrays over). Not checked.
 */
export function mannWhitneySorted(
  x: Float64Array,
  y: Float64Array,
  options: MannWhitneyOptions = {},
): MannWhitneyResult {
  const confidence = options.confidence ?? 0.95;
  if (!(confidence > 0 && confidence < 1)) throw new RangeError(`confidence must be in (0, 1), got ${confidence}`);
  const exactMax = options.exactMaxProduct ?? EXACT_MAX_PRODUCT;
  const n1 = x.length;
  const n2 = y.length;
  if (n1 === 0 || n2 === 0) {
    return {
      n1,
      n2,
      u: 0,
      pValue: Number.NaN,
      method: 'none',
      ties: false,
      shift: Number.NaN,
      ci: [Number.NEGATIVE_INFINITY, Number.POSITIVE_INFINITY],
      confidence,
    };
  }

  // One merge pass over both sorted samples: U, tie groups and the tie term Σ(t³ − t).
  let u = 0;
  let yBelow = 0;
  let tieTerm = 0;
  let ties = false;
  let i = 0;
  let j = 0;
  while (i < n1 || j < n2) {
    const v = i < n1 && (j >= n2 || x[i]! <= y[j]!) ? x[i]! : y[j]!;
    let cx = 0;
    let cy = 0;
    while (i < n1 && x[i] === v) {
      cx++;
      i++;
    }
    while (j < n2 && y[j] === v) {
      cy++;
      j++;
    }
    const t = cx + cy;
    if (t > 1) {
      ties = true;
      tieTerm += t * t * t - t;
    }
    u += cx * (yBelow + 0.5 * cy);
    yBelow += cy;
  }

  const mn = n1 * n2;
  const alpha = 1 - confidence;
  let pValue: number;
  let z: number | undefined;
  let method: 'exact' | 'normal';
  let k: number; // CI = [D(k), D(mn+1−k)]
  if (!ties && mn <= exactMax) {
    method = 'exact';
    const cdf = exactUCdf(n1, n2);
    const lower = cdf[u]!; // P(U ≤ u)
    const upper = cdf[mn - u]!; // P(U ≥ u) = P(U ≤ mn − u) by symmetry
    pValue = Math.min(1, 2 * Math.min(lower, upper));
    // largest q with P(U ≤ q) ≤ α/2 (tiny slack for rounding of the cumulative sums)
    let q = -1;
    while (q + 1 < mn && cdf[q + 1]! <= alpha / 2 + 1e-12) q++;
    k = q + 1;
  } else {
    method = 'normal';
    const nTot = n1 + n2;
    const mu = mn / 2;
    const variance = (mn / 12) * (nTot + 1 - tieTerm / (nTot * (nTot - 1)));
    const sigma = variance > 0 ? Math.sqrt(variance) : 0;
    const d = u - mu;
    if (sigma === 0 || Math.abs(d) <= 0.5) {
      z = 0;
      pValue = 1;
    } else {
      z = (d - 0.5 * Math.sign(d)) / sigma;
      pValue = Math.min(1, erfcHalf(Math.abs(z)));
    }
    // P(U ≤ q) ≈ Φ((q + ½ − μ)/σ) ≤ α/2  ⇔  q ≤ μ − z(1−α/2)·σ − ½
    const zq = normalQuantile(1 - alpha / 2);
    k = Math.floor(mu - zq * sigma - 0.5) + 1;
    if (k > Math.floor((mn + 1) / 2)) k = Math.floor((mn + 1) / 2);
  }

  const shift = hodgesLehmann(x, y);
  const ci: [number, number] =
    k >= 1
      ? [pairwiseDifferenceOrderStatistic(x, y, k), pairwiseDifferenceOrderStatistic(x, y, mn + 1 - k)]
      : [Number.NEGATIVE_INFINITY, Number.POSITIVE_INFINITY];

  const result: MannWhitneyResult = { n1, n2, u, pValue, method, ties, shift, ci, confidence };
  if (z !== undefined) result.z = z;
  return result;
}

/** 2·P(Z > a) = erfc(a/√2). */
function erfcHalf(a: number): number {
  return erfc(a / Math.SQRT2);
}
