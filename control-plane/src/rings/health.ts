/**
 * Version health: does a delegate version fail some kind of task more often than the
 * version it replaces? Judged per task kind while a ring soaks during a rollout.
 *
 * The test is a one-sided Fisher's exact test on the 2x2 table (new/old version x
 * failed/succeeded) of one task kind, rejecting at FERRY_RING_ALPHA, and only once the
 * new version has run at least FERRY_RING_MIN_SAMPLE tasks of that kind.
 *
 * Why Fisher's exact test and not a Bayesian rate comparison (e.g. Beta-Binomial
 * posteriors and P(rate_new > rate_old)):
 * - The counts are small exactly when it matters: minutes after a rollout starts, a
 *   ring has run a few dozen tasks of a kind. Fisher's test is exact for any counts (it
 *   conditions on the margins and sums hypergeometric probabilities), so there is no
 *   normal approximation to break down at 20 tasks or at 0 failures, as the z-test or
 *   chi-square would.
 * - Its error rate is a guarantee we can state: under "both versions fail alike", one
 *   check halts a healthy rollout with probability at most alpha. A Bayesian decision
 *   needs a prior and a posterior threshold whose false-halt rate depends on both and
 *   has to be simulated; an operator cannot read it off a setting.
 * - It needs nothing but counts; the evidence (counts, rates, p-value) is what the ring
 *   history and the log show, and anyone can recompute it (R: `fisher.test(m,
 *   alternative = "greater")`, SciPy: `fisher_exact(m, alternative="greater")`).
 * Fisher's test is conservative for discrete counts (the real false-halt rate is below
 * alpha), which costs a few more tasks before a halt; a broken task kind fails most of
 * its tasks, so the regression still shows within the first minimum sample.
 * Caveats, accepted: the check repeats every FERRY_RING_CHECK_INTERVAL during the soak
 * and over every kind, so the chance of a false halt over a whole soak is larger than
 * alpha (keep alpha small: default 0.01); a false halt costs a rollback, a missed
 * regression costs customers, and that asymmetry is the one we want.
 *
 * The baseline ("old") is the previous version's tasks of the same kind over the same
 * period (any account: while ring0 soaks, the later rings still run the previous
 * version, which is the fairest comparison — same time, same targets). When the previous
 * version ran no task of that kind in the window (every delegate already upgraded, or the
 * other rings are quiet), the baseline is the previous version's last tasks of that kind
 * before the rollout started (HISTORY_BASELINE). With no baseline at all, the kind is not
 * judged: a kind nobody ran before cannot regress.
 */
import { fisherGreater } from './fisher.js';

export interface Counts {
  failed: number;
  total: number;
}

export interface KindSample {
  kind: string;
  new: Counts;
  old: Counts;
  /** where the old counts come from */
  baseline: 'window' | 'history' | 'none';
}

export interface HealthOptions {
  minSample: number;
  alpha: number;
}

export interface KindVerdict {
  kind: string;
  verdict: 'regressed' | 'healthy' | 'insufficient';
  new: Counts & { rate: number | null };
  old: Counts & { rate: number | null };
  baseline: KindSample['baseline'];
  pValue: number | null;
  alpha: number;
  minSample: number;
}

export interface HealthVerdict {
  /** false when some kind regressed */
  healthy: boolean;
  /** the kinds that regressed, most significant first */
  regressed: KindVerdict[];
  kinds: KindVerdict[];
}

/** How many of the previous version's tasks of a kind make the history baseline. */
export const HISTORY_BASELINE = 200;

/** Error kinds that are not the delegate version's fault: left out of both samples. */
export const EXCLUDED_ERROR_KINDS = ['Canceled', 'DelegateLost', 'NoEligibleDelegate'] as const;

const rate = (c: Counts): number | null => (c.total === 0 ? null : c.failed / c.total);
const round = (v: number | null, digits = 4): number | null => (v === null ? null : Number(v.toFixed(digits)));

export function judgeKind(s: KindSample, o: HealthOptions): KindVerdict {
  const base = {
    kind: s.kind,
    new: { ...s.new, rate: round(rate(s.new)) },
    old: { ...s.old, rate: round(rate(s.old)) },
    baseline: s.baseline,
    alpha: o.alpha,
    minSample: o.minSample,
  };
  if (s.new.total < o.minSample || s.old.total === 0) return { ...base, verdict: 'insufficient', pValue: null };
  const p = fisherGreater(s.new.failed, s.new.total - s.new.failed, s.old.failed, s.old.total - s.old.failed);
  const worse = (rate(s.new) ?? 0) > (rate(s.old) ?? 0);
  return { ...base, verdict: worse && p <= o.alpha ? 'regressed' : 'healthy', pValue: Number(p.toPrecision(4)) };
}

export function judgeHealth(samples: KindSample[], o: HealthOptions): HealthVerdict {
  const kinds = samples.map((s) => judgeKind(s, o)).sort((a, b) => a.kind.localeCompare(b.kind));
  const regressed = kinds.filter((k) => k.verdict === 'regressed').sort((a, b) => (a.pValue ?? 1) - (b.pValue ?? 1));
  return { healthy: regressed.length === 0, regressed, kinds };
}

/** The evidence kept in ring history and the log for a halt. */
export function evidenceOf(k: KindVerdict, versions: { new: string; old: string | null }) {
  return {
    kind: k.kind,
    new: { version: versions.new, failed: k.new.failed, total: k.new.total, rate: k.new.rate },
    old: { version: versions.old, failed: k.old.failed, total: k.old.total, rate: k.old.rate },
    baseline: k.baseline,
    pValue: k.pValue,
    alpha: k.alpha,
    minSample: k.minSample,
    test: 'fisher-exact-one-sided',
  };
}
