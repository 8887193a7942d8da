/**
 * The canary judge: compares canary metrics against baseline metrics and returns a verdict
 * (CONTRACT §6 `verification`). Pure: no I/O, no clock, deterministic.
 *
 * Modelled on Netflix Kayenta's `NetflixACAJudge` + `MannWhitneyClassifier` +
 * `WeightedSumScorer`. The rules, in the order they are applied to each metric, and how
 * each matches or differs from Kayenta:
 *
 * 1. Clean: drop NaN and ±Infinity points on both sides (Kayenta `nanStrategy: remove`;
 *    we also drop infinities, which Prometheus returns for divisions by zero).
 * 2. No data: a side with no points left → `NoData` ("no data"). Kayenta: `Nodata`.
 * 3. Sparse: a side with fewer than `minPoints` (default 3) points → `NoData` with its
 *    own "too few points" reason, never a pass. Kayenta has no minimum.
 * 4. Outliers: on each side separately, points outside Tukey's far-out fences
 *    [Q1 − 3·IQR, Q3 + 3·IQR] (quartiles by linear interpolation) are removed — the factor
 *    3.0 is Kayenta's `IQRDetector(factor = 3.0)`. Unlike Kayenta, removal is skipped when
 *    a side has fewer than 8 points (quartiles mean little), when IQR = 0 (e.g. an error
 *    rate that is mostly 0: its non-zero points are the signal, not outliers) and when it
 *    would remove more than 10% of a side (then they are a mode of the distribution, such
 *    as error bursts, and hiding them could hide a regression). `outliers: 'keep'`
 *    disables the step.
 * 5. Identical: the same multiset of values on both sides → `Pass`. Kayenta: the same.
 * 6. Constant: both sides constant (after step 4). Equal → `Pass`; different → the
 *    deviation is certain and goes straight to the effect-size gate (step 8) with p from
 *    the test. Kayenta instead adds 1e-5-scaled Gaussian noise to break the ties, which
 *    makes the result random.
 * 7. Test: two-sided Mann-Whitney U test with a Hodges-Lehmann estimate of the shift
 *    (canary − baseline) and its confidence interval at the sensitivity's confidence
 *    (see mann-whitney.ts). The canary deviates upwards when the interval lies entirely
 *    above 0, downwards when entirely below 0 (Kayenta's rule); otherwise `Pass` ("no
 *    significant difference"). Two differences from Kayenta: (a) Kayenta requires the
 *    interval to clear ±25% of |estimate| (`tolerance = 0.25`) rather than 0 — Ferry uses
 *    0 and relies on the explicit effect-size gate (rule 8) for practical significance;
 *    (b) a deviation is also declared when the tie-corrected p ≤ 1 − confidence (the
 *    direction from U vs n1·n2/2). For untied data the two conditions coincide (the
 *    interval is the test inverted); they differ for zero-inflated series such as error
 *    rates — baseline all 0, canary 0 with bursts — where the median pairwise difference
 *    is 0 so the interval touches 0 and Kayenta passes a clearly worse canary.
 * 8. Effect size gate: effect = mean(canary) / mean(baseline) (Kayenta's `meanRatio`,
 *    computed after outlier removal). An upward deviation is `High` only if
 *    effect > max(allowedIncrease, 1 + minEffect); a downward one is `Low` only if
 *    effect < min(allowedDecrease, 1 / (1 + minEffect)). Otherwise `Pass` with a
 *    "within tolerance" reason — so tiny but statistically significant shifts (common
 *    with 600 points) pass. `allowedIncrease`/`allowedDecrease` are Kayenta's effect-size
 *    thresholds (default 1.0, i.e. no tolerance); `minEffect` comes from the sensitivity
 *    and is Ferry's addition. `allowedDecrease` is a ratio ≤ 1 (0.9 = a 10% drop is
 *    tolerated); a value > 1 is read as 1/value. Zero and negative means: a baseline mean
 *    of 0 with a positive canary mean is an unbounded increase (Kayenta treats a 0 baseline
 *    mean as "no effect", which hides a 0 → non-zero error rate); both 0 → 1; when either
 *    mean is negative the ratio means nothing and the gate is not applied.
 * 9. Direction: the classification reports what was observed (`High`/`Low`); `direction`
 *    decides whether it fails: increase → `High` fails, decrease → `Low` fails, either →
 *    both fail. Kayenta reports a deviation in the harmless direction as `Pass`; Ferry
 *    keeps `High`/`Low` visible with `failed: false` and says so in the reason.
 *
 * Verdict (Kayenta `WeightedSumScorer` + `ThresholdScoreClassifier`):
 * - Score = 100 · Σ weight(passing) / Σ weight(counted), weights default 1. Counted are
 *   metrics with data; `NoData` metrics (empty or sparse) are excluded, or with
 *   `failOnNoData` counted as failed (Kayenta: excluded, or failed with `mustHaveData`).
 *   Metric weights replace Kayenta's group weights.
 * - Nothing counted (every metric `NoData`, or no metrics) → verdict `NoData`, score 0 —
 *   or `Unhealthy` with `failOnNoData`.
 * - A failing critical metric (including a critical `NoData` metric under `failOnNoData`)
 *   forces `Unhealthy`. Kayenta also sets the score to 0 then; Ferry keeps the computed
 *   score so the log still shows how the rest fared.
 * - Otherwise score ≥ thresholds.healthy (default 95) → `Healthy`, ≥ thresholds.marginal
 *   (default 75) → `MediumHealthy`, below → `Unhealthy` (Kayenta's pass/marginal).
 *
 * Sensitivity → (confidence of the interval, minimum effect):
 *   high   → 0.90, 2%   (detects the smallest shifts, more false alarms)
 *   medium → 0.95, 5%   (default)
 *   low    → 0.98, 10%  (0.98 is Kayenta's fixed `confLevel`)
 */

import { mannWhitneySorted, type MannWhitneyResult } from './mann-whitney.js';

export type Direction = 'increase' | 'decrease' | 'either';
export type Sensitivity = 'high' | 'medium' | 'low';
export type Classification = 'Pass' | 'High' | 'Low' | 'NoData';
export type VerdictName = 'Healthy' | 'MediumHealthy' | 'Unhealthy' | 'NoData';

export interface MetricInput {
  name: string;
  /** Which way is bad. */
  direction: Direction;
  /** A failing critical metric forces `Unhealthy`. */
  critical?: boolean;
  /** Weight in the score, ≥ 0; default 1. */
  weight?: number;
  /** Tolerated ratio canary/baseline upwards, e.g. 1.1 = 10% increase tolerated. Default 1. */
  allowedIncrease?: number;
  /** Tolerated ratio downwards, e.g. 0.9 = 10% decrease tolerated. Default 1. */
  allowedDecrease?: number;
  baseline: readonly number[];
  canary: readonly number[];
}

export interface JudgeInput {
  metrics: readonly MetricInput[];
  /** Default 'medium'. */
  sensitivity?: Sensitivity;
  /** NoData metrics count as failed (and all-NoData is Unhealthy). Default false. */
  failOnNoData?: boolean;
  /** Fewer finite points than this on either side is NoData ("sparse"). Default 3, min 1. */
  minPoints?: number;
  /** Score thresholds; defaults healthy 95, marginal 75. */
  thresholds?: { healthy?: number; marginal?: number };
  /** Outlier handling (rule 4). Default 'remove'. */
  outliers?: 'remove' | 'keep';
}

export interface SeriesSummary {
  /** Points used in the comparison (after dropping non-finite values and outliers). */
  points: number;
  median: number | null;
  mean: number | null;
  /** Non-finite points dropped. */
  droppedNonFinite: number;
  /** Outliers removed (rule 4). */
  droppedOutliers: number;
}

export interface MetricVerdict {
  name: string;
  classification: Classification;
  /** Whether this metric counts as failed (direction applied; NoData under failOnNoData). */
  failed: boolean;
  critical: boolean;
  direction: Direction;
  weight: number;
  baseline: SeriesSummary;
  canary: SeriesSummary;
  /** Two-sided Mann-Whitney p-value; null when not tested. */
  pValue: number | null;
  /** U statistic of the canary; null when not tested. */
  statistic: number | null;
  /** mean(canary) / mean(baseline); null when undefined or unbounded (see reason). */
  effectSize: number | null;
  /** Hodges-Lehmann shift estimate canary − baseline; null when not tested. */
  shift: number | null;
  /** Confidence interval of the shift; null when not tested or unattainable. */
  ci: [number, number] | null;
  method: 'exact' | 'normal' | null;
  /** A sentence: why this classification. */
  reason: string;
}

export interface Verdict {
  verdict: VerdictName;
  /** 0–100, rounded to 2 decimals. */
  score: number;
  metrics: MetricVerdict[];
  /** A sentence for the whole verdict. */
  reason: string;
  sensitivity: Sensitivity;
  confidence: number;
}

export const SENSITIVITY: Readonly<Record<Sensitivity, { confidence: number; minEffect: number }>> = Object.freeze({
  high: { confidence: 0.9, minEffect: 0.02 },
  medium: { confidence: 0.95, minEffect: 0.05 },
  low: { confidence: 0.98, minEffect: 0.1 },
});

export const DEFAULT_MIN_POINTS = 3;
export const DEFAULT_THRESHOLDS = Object.freeze({ healthy: 95, marginal: 75 });
/** Tukey far-out fence factor (Kayenta's IQRDetector factor). */
export const OUTLIER_IQR_FACTOR = 3;
/** Outlier removal needs at least this many points on a side. */
export const OUTLIER_MIN_POINTS = 8;
/** Outlier removal is skipped when it would remove more than this share of a side. */
export const OUTLIER_MAX_SHARE = 0.1;

// ---------------------------------------------------------------------------------------
// helpers

function finite(values: readonly number[]): number[] {
  const out: number[] = [];
  for (const v of values) if (typeof v === 'number' && Number.isFinite(v)) out.push(v);
  return out;
}

/** Quantile of ascending sorted values by linear interpolation (R type 7 / numpy default). */
function quantileSorted(s: Float64Array, q: number): number {
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  const a = s[lo]!;
  const b = s[hi]!;
  return a + (b - a) * (pos - lo);
}

function removeOutliers(sorted: Float64Array, mode: 'remove' | 'keep'): Float64Array {
  if (mode === 'keep' || sorted.length < OUTLIER_MIN_POINTS) return sorted;
  const q1 = quantileSorted(sorted, 0.25);
  const q3 = quantileSorted(sorted, 0.75);
  const iqr = q3 - q1;
  if (!(iqr > 0)) return sorted;
  const low = q1 - OUTLIER_IQR_FACTOR * iqr;
  const high = q3 + OUTLIER_IQR_FACTOR * iqr;
  let start = 0;
  let end = sorted.length;
  while (start < end && sorted[start]! < low) start++;
  while (end > start && sorted[end - 1]! > high) end--;
  const removed = sorted.length - (end - start);
  if (removed === 0 || removed > OUTLIER_MAX_SHARE * sorted.length) return sorted;
  return sorted.subarray(start, end);
}

function mean(s: Float64Array): number {
  let sum = 0;
  for (let i = 0; i < s.length; i++) sum += s[i]!;
  return sum / s.length;
}

/** Short number for sentences and tables: 4 significant digits, no exponent for normal sizes. */
export function fmtNum(v: number | null | undefined): string {
  if (v === null || v === undefined || Number.isNaN(v)) return '-';
  if (!Number.isFinite(v)) return v > 0 ? '∞' : '-∞';
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e6 || a < 1e-4) return v.toExponential(2);
  return String(Number(v.toPrecision(4)));
}

/** "p=0.0304" or "p<0.0001". */
function pText(p: number): string {
  return p < 0.0001 ? 'p<0.0001' : `p=${fmtP(p)}`;
}

function fmtP(p: number | null): string {
  if (p === null || Number.isNaN(p)) return '-';
  if (p < 0.0001) return '<0.0001';
  return p.toFixed(4);
}

function fmtPct(confidence: number): string {
  return `${Number((confidence * 100).toFixed(1))}%`;
}

function summary(sorted: Float64Array, droppedNonFinite: number, droppedOutliers: number): SeriesSummary {
  return {
    points: sorted.length,
    median: sorted.length ? quantileSorted(sorted, 0.5) : null,
    mean: sorted.length ? mean(sorted) : null,
    droppedNonFinite,
    droppedOutliers,
  };
}

function isFailure(direction: Direction, c: Classification): boolean {
  if (c === 'High') return direction === 'increase' || direction === 'either';
  if (c === 'Low') return direction === 'decrease' || direction === 'either';
  return false;
}

function sameValues(a: Float64Array, b: Float64Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

// ---------------------------------------------------------------------------------------
// per metric

interface Settings {
  confidence: number;
  minEffect: number;
  minPoints: number;
  failOnNoData: boolean;
  outliers: 'remove' | 'keep';
}

function classifyMetric(m: MetricInput, st: Settings): MetricVerdict {
  const weight = m.weight === undefined ? 1 : m.weight;
  if (!(Number.isFinite(weight) && weight >= 0)) throw new RangeError(`metric ${m.name}: weight must be a number ≥ 0`);
  const critical = m.critical === true;
  const base = finite(m.baseline);
  const can = finite(m.canary);
  const nanB = m.baseline.length - base.length;
  const nanC = m.canary.length - can.length;
  const nanNote =
    nanB + nanC > 0
      ? ` (${plural(nanB + nanC, 'NaN/non-finite point')} dropped: baseline ${nanB}, canary ${nanC})`
      : '';

  const common = { name: m.name, critical, direction: m.direction, weight };
  const untested = { pValue: null, statistic: null, effectSize: null, shift: null, ci: null, method: null };

  const noData = (reason: string, bSorted: Float64Array, cSorted: Float64Array): MetricVerdict => ({
    ...common,
    classification: 'NoData',
    failed: st.failOnNoData,
    baseline: summary(bSorted, nanB, 0),
    canary: summary(cSorted, nanC, 0),
    ...untested,
    reason:
      reason +
      nanNote +
      (st.failOnNoData ? '; counted as failed (failOnNoData)' : '; left out of the score (failOnNoData is off)'),
  });

  const bAll = Float64Array.from(base).sort();
  const cAll = Float64Array.from(can).sort();

  // Rule 2: no data.
  if (base.length === 0 || can.length === 0) {
    const which =
      base.length === 0 && can.length === 0 ? 'baseline and canary' : base.length === 0 ? 'the baseline' : 'the canary';
    return noData(`no data: ${which} returned no usable points`, bAll, cAll);
  }
  // Rule 3: sparse.
  if (base.length < st.minPoints || can.length < st.minPoints) {
    return noData(
      `too few points to judge: baseline ${base.length}, canary ${can.length}; at least ${st.minPoints} are needed on each side`,
      bAll,
      cAll,
    );
  }

  // Rule 4: outliers.
  const b = removeOutliers(bAll, st.outliers);
  const c = removeOutliers(cAll, st.outliers);
  const outB = bAll.length - b.length;
  const outC = cAll.length - c.length;
  const outNote =
    outB + outC > 0 ? ` (${plural(outB + outC, 'outlier')} removed: baseline ${outB}, canary ${outC})` : '';
  const baseline = summary(b, nanB, outB);
  const canary = summary(c, nanC, outC);
  const notes = nanNote + outNote;

  // Rule 5: identical.
  if (sameValues(b, c)) {
    return {
      ...common,
      classification: 'Pass',
      failed: false,
      baseline,
      canary,
      pValue: 1,
      statistic: (b.length * c.length) / 2,
      effectSize: 1,
      shift: 0,
      ci: [0, 0],
      method: null,
      reason: `canary and baseline values are identical${notes}`,
    };
  }

  // Rule 7: test (also computed for constant series, for p and U).
  const mw: MannWhitneyResult = mannWhitneySorted(c, b, { confidence: st.confidence });
  const ciFinite = Number.isFinite(mw.ci[0]) && Number.isFinite(mw.ci[1]);
  const tested = {
    pValue: mw.pValue,
    statistic: mw.u,
    shift: mw.shift,
    ci: ciFinite ? ([mw.ci[0], mw.ci[1]] as [number, number]) : null,
    method: mw.method === 'none' ? null : mw.method,
  };
  const pct = fmtPct(st.confidence);
  const alpha = 1 - st.confidence;
  const halfMn = (mw.n1 * mw.n2) / 2;
  const ciText = ciFinite ? `${pct} CI of the shift ${fmtNum(mw.ci[0])} to ${fmtNum(mw.ci[1])}` : `the ${pct} CI is unbounded at this sample size`;
  const medText = `median ${fmtNum(canary.median)} vs ${fmtNum(baseline.median)}`;

  // Rule 8 inputs: effect size.
  const mB = baseline.mean!;
  const mC = canary.mean!;
  let ratio: number | null; // internal, may be Infinity; null = undefined
  if (mB < 0 || mC < 0) ratio = null;
  else if (mB === 0) ratio = mC === 0 ? 1 : Number.POSITIVE_INFINITY;
  else ratio = mC / mB;
  const effectSize = ratio !== null && Number.isFinite(ratio) ? ratio : null;
  const ratioText =
    ratio === null
      ? 'mean ratio undefined (negative values), effect-size gate not applied'
      : Number.isFinite(ratio)
        ? `mean ratio ${fmtNum(ratio)}`
        : 'baseline mean is 0 and canary mean is not (an unbounded increase)';

  const passed = (reason: string): MetricVerdict => ({ ...common, classification: 'Pass', failed: false, baseline, canary, effectSize, ...tested, reason });

  // Rule 6 / 7: which way (if any) does the canary deviate?
  const bConst = b[0] === b[b.length - 1];
  const cConst = c[0] === c[c.length - 1];
  let deviation: 'up' | 'down' | null;
  let why: string;
  if (bConst && cConst && b[0] === c[0]) {
    return passed(`both series are constant at the same value ${fmtNum(b[0]!)}${notes}`);
  }
  if (bConst && cConst) {
    deviation = c[0]! > b[0]! ? 'up' : 'down';
    why = `both series are constant: canary ${fmtNum(c[0]!)} vs baseline ${fmtNum(b[0]!)}`;
  } else if (ciFinite && mw.ci[0] > 0) {
    deviation = 'up';
    why = `${medText}, ${ciText} (above 0), ${pText(mw.pValue)}`;
  } else if (ciFinite && mw.ci[1] < 0) {
    deviation = 'down';
    why = `${medText}, ${ciText} (below 0), ${pText(mw.pValue)}`;
  } else if (mw.pValue <= alpha && mw.u !== halfMn) {
    // Tied, zero-inflated series (error rates): the rank test is significant although the
    // median pairwise difference — and so the interval's end — is 0.
    deviation = mw.u > halfMn ? 'up' : 'down';
    why = `${medText}, ${pText(mw.pValue)} ≤ ${fmtNum(alpha)} (U ${fmtNum(mw.u)} vs ${fmtNum(halfMn)} expected; the shift interval touches 0 because most values are tied)`;
  } else {
    deviation = null;
    why = `${medText}, ${ciText}${ciFinite ? ' includes 0' : ''}, ${pText(mw.pValue)}`;
  }

  if (deviation === null) {
    return passed(`no significant difference at ${pct} confidence: ${why}${notes}`);
  }

  // Rule 8: effect-size gate with the tolerance band.
  const allowedIncrease = Math.max(m.allowedIncrease ?? 1, 1 + st.minEffect);
  let allowedDecrease = m.allowedDecrease ?? 1;
  if (allowedDecrease > 1) allowedDecrease = 1 / allowedDecrease;
  allowedDecrease = Math.min(allowedDecrease, 1 / (1 + st.minEffect));
  const limit = deviation === 'up' ? allowedIncrease : allowedDecrease;
  const exceeds = ratio === null ? true : deviation === 'up' ? ratio > allowedIncrease : ratio < allowedDecrease;
  const word = deviation === 'up' ? 'higher' : 'lower';
  if (!exceeds) {
    return passed(`canary is ${word} than baseline (${why}) but the ${ratioText} is within the tolerated ${fmtNum(limit)}${notes}`);
  }

  // Rule 9: direction.
  const classification: Classification = deviation === 'up' ? 'High' : 'Low';
  const failed = isFailure(m.direction, classification);
  const gateText =
    ratio === null || !Number.isFinite(ratio) ? ratioText : `${ratioText} beyond the tolerated ${fmtNum(limit)}`;
  const tail = failed
    ? `; fails for direction ${m.direction}`
    : `; not a failure for direction ${m.direction}`;
  return {
    ...common,
    classification,
    failed,
    baseline,
    canary,
    effectSize,
    ...tested,
    reason: `canary is ${word} than baseline: ${why}, ${gateText}${tail}${notes}`,
  };
}

// ---------------------------------------------------------------------------------------
// verdict

/** Judge a canary against its baseline. See the module comment for the rules. */
export function judge(input: JudgeInput): Verdict {
  const sensitivity = input.sensitivity ?? 'medium';
  const sens = SENSITIVITY[sensitivity];
  if (!sens) throw new RangeError(`unknown sensitivity ${String(sensitivity)}`);
  const minPoints = Math.max(1, Math.floor(input.minPoints ?? DEFAULT_MIN_POINTS));
  const healthy = input.thresholds?.healthy ?? DEFAULT_THRESHOLDS.healthy;
  const marginal = input.thresholds?.marginal ?? DEFAULT_THRESHOLDS.marginal;
  const failOnNoData = input.failOnNoData === true;
  const st: Settings = {
    confidence: sens.confidence,
    minEffect: sens.minEffect,
    minPoints,
    failOnNoData,
    outliers: input.outliers ?? 'remove',
  };

  const metrics = input.metrics.map((m) => classifyMetric(m, st));

  let counted = 0;
  let passed = 0;
  let nCounted = 0;
  let nPassed = 0;
  const noData: MetricVerdict[] = [];
  for (const r of metrics) {
    if (r.classification === 'NoData') {
      noData.push(r);
      if (!failOnNoData) continue;
    }
    nCounted++;
    counted += r.weight;
    if (!r.failed) {
      nPassed++;
      passed += r.weight;
    }
  }
  const score = counted > 0 ? Math.round((10000 * passed) / counted) / 100 : 0;
  const failures = metrics.filter((r) => r.failed);
  const criticalFailures = failures.filter((r) => r.critical);
  const names = (rs: MetricVerdict[]): string => rs.map((r) => r.name).join(', ');
  const noDataNote =
    noData.length > 0 && !failOnNoData && nCounted > 0
      ? `; ${plural(noData.length, 'metric')} without enough data left out (${names(noData)})`
      : '';
  const base = { score, metrics, sensitivity, confidence: sens.confidence };

  if (metrics.length === 0) {
    return failOnNoData
      ? { ...base, verdict: 'Unhealthy', reason: 'no metrics to judge, and failOnNoData is set' }
      : { ...base, verdict: 'NoData', reason: 'no metrics to judge' };
  }
  if (criticalFailures.length > 0) {
    const first = criticalFailures[0]!;
    return {
      ...base,
      verdict: 'Unhealthy',
      reason: `critical metric ${first.name} failed (${first.classification}: ${first.reason})${
        criticalFailures.length > 1 ? `; also critical: ${names(criticalFailures.slice(1))}` : ''
      }`,
    };
  }
  if (nCounted === 0 || counted === 0) {
    if (noData.length === metrics.length) {
      return failOnNoData
        ? { ...base, verdict: 'Unhealthy', reason: `no metric had enough data (${names(noData)}), and failOnNoData is set` }
        : { ...base, verdict: 'NoData', reason: `no metric had enough data to judge (${names(noData)})` };
    }
    // Everything with data has weight 0: nothing to score.
    return { ...base, verdict: 'NoData', reason: `no metric with data carries weight${noDataNote}` };
  }

  const share = `${nPassed} of ${plural(nCounted, 'metric')} passed`;
  const failedText = failures.length > 0 ? `; failed: ${names(failures)}` : '';
  let verdict: VerdictName;
  let band: string;
  if (score >= healthy) {
    verdict = 'Healthy';
    band = `at least ${healthy}`;
  } else if (score >= marginal) {
    verdict = 'MediumHealthy';
    band = `below ${healthy} but at least ${marginal}`;
  } else {
    verdict = 'Unhealthy';
    band = `below ${marginal}`;
  }
  return {
    ...base,
    verdict,
    reason: `score ${fmtNum(score)} (${share}${counted !== nCounted ? ', by weight' : ''}) is ${band}${failedText}${noDataNote}`,
  };
}

// ---------------------------------------------------------------------------------------
// log lines

function pad(s: string, w: number, right = false): string {
  return right ? s.padStart(w) : s.padEnd(w);
}

/**
 * Lines for a step log: the verdict, then a compact table (metric, points and medians on
 * each side, p-value, classification with failure mark, reason).
 */
export function formatVerdict(v: Verdict): string[] {
  const lines: string[] = [`verification ${v.verdict}, score ${fmtNum(v.score)}: ${v.reason}`];
  if (v.metrics.length === 0) return lines;
  const rows = v.metrics.map((m) => [
    m.name + (m.critical ? ' *' : ''),
    String(m.baseline.points),
    fmtNum(m.baseline.median),
    String(m.canary.points),
    fmtNum(m.canary.median),
    fmtP(m.pValue),
    m.classification === 'Pass' || m.classification === 'NoData'
      ? m.classification + (m.failed ? ' FAIL' : '')
      : `${m.classification} ${m.failed ? 'FAIL' : 'ok'}`,
    m.reason,
  ]);
  const header = ['metric', 'base n', 'base median', 'canary n', 'canary median', 'p-value', 'result', 'reason'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const numeric = [false, true, true, true, true, true, false, false];
  const line = (cells: string[]): string =>
    cells
      .map((cell, i) => (i === cells.length - 1 ? cell : pad(cell, widths[i]!, numeric[i])))
      .join('  ')
      .trimEnd();
  lines.push(line(header));
  for (const r of rows) lines.push(line(r));
  if (v.metrics.some((m) => m.critical)) lines.push('(* critical metric)');
  return lines;
}
