/**
 * Canary verification: a pure judge (Mann-Whitney U test + Hodges-Lehmann shift interval,
 * effect-size gate, weighted score) modelled on Netflix Kayenta's NetflixACAJudge.
 * See judge.ts for the rules and mann-whitney.ts for the statistics.
 */
export {
  judge,
  formatVerdict,
  fmtNum,
  SENSITIVITY,
  DEFAULT_MIN_POINTS,
  DEFAULT_THRESHOLDS,
  OUTLIER_IQR_FACTOR,
  OUTLIER_MIN_POINTS,
  OUTLIER_MAX_SHARE,
  type Direction,
  type Sensitivity,
  type Classification,
  type VerdictName,
  type MetricInput,
  type JudgeInput,
  type SeriesSummary,
  type MetricVerdict,
  type Verdict,
} from './judge.js';
export {
  mannWhitney,
  mannWhitneySorted,
  exactUCdf,
  hodgesLehmann,
  pairwiseDifferenceOrderStatistic,
  EXACT_MAX_PRODUCT,
  type MannWhitneyOptions,
  type MannWhitneyResult,
} from './mann-whitney.js';
export { erfc, normalCdf, normalSf, normalQuantile } from './normal.js';
