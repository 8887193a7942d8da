import { describe, expect, it } from 'vitest';
import { formatVerdict, judge, type JudgeInput, type MetricInput } from './judge.js';

function parkMiller(seed: number): () => number {
  let s = seed;
  return () => {
    s = (s * 48271) % 2147483647;
    return s / 2147483647;
  };
}

/** n roughly normal points (Irwin-Hall of 4 uniforms) with the given mean and sd. */
function series(g: () => number, n: number, mean: number, sd: number): number[] {
  return Array.from({ length: n }, () => mean + sd * Math.sqrt(3) * (g() + g() + g() + g() - 2));
}

function metric(name: string, over: Partial<MetricInput> & Pick<MetricInput, 'baseline' | 'canary'>): MetricInput {
  return { name, direction: 'increase', ...over };
}

function pair(seed: number, n: number, factor: number, mean = 100, sd = 5): { baseline: number[]; canary: number[] } {
  const g = parkMiller(seed);
  return { baseline: series(g, n, mean, sd), canary: series(g, n, mean * factor, sd * factor) };
}

function one(m: MetricInput, rest: Omit<JudgeInput, 'metrics'> = {}) {
  const v = judge({ metrics: [m], ...rest });
  return { v, m: v.metrics[0]! };
}

describe('judge: classification', () => {
  it('same distribution → Pass, Healthy, score 100', () => {
    const v = judge({
      metrics: [
        metric('latency', pair(1, 60, 1)),
        metric('errors', pair(2, 60, 1, 0.01, 0.002)),
        metric('throughput', { direction: 'decrease', ...pair(3, 60, 1, 500, 20) }),
      ],
    });
    expect(v.metrics.map((m) => m.classification)).toEqual(['Pass', 'Pass', 'Pass']);
    expect(v.verdict).toBe('Healthy');
    expect(v.score).toBe(100);
    expect(v.reason).toMatch(/3 of 3 metrics passed/);
    for (const m of v.metrics) {
      expect(m.baseline.points).toBe(60);
      expect(m.pValue).toBeGreaterThan(0);
      expect(m.statistic).not.toBeNull();
    }
  });

  it('a clear increase on an increase metric → High, failed, Unhealthy', () => {
    const { v, m } = one(metric('p95', pair(4, 40, 1.3)));
    expect(m.classification).toBe('High');
    expect(m.failed).toBe(true);
    expect(m.pValue!).toBeLessThan(0.001);
    expect(m.effectSize!).toBeGreaterThan(1.2);
    expect(m.canary.median!).toBeGreaterThan(m.baseline.median!);
    expect(m.reason).toMatch(/canary is higher than baseline/);
    expect(m.reason).toMatch(/fails for direction increase/);
    expect(v.verdict).toBe('Unhealthy');
    expect(v.score).toBe(0);
  });

  it('a decrease on an increase metric → Low, not a failure', () => {
    const { v, m } = one(metric('p95', pair(5, 40, 0.7)));
    expect(m.classification).toBe('Low');
    expect(m.failed).toBe(false);
    expect(m.reason).toMatch(/not a failure for direction increase/);
    expect(v.verdict).toBe('Healthy');
  });

  it('direction decrease: Low fails, High does not', () => {
    expect(one(metric('rps', { direction: 'decrease', ...pair(6, 40, 0.7) })).m.failed).toBe(true);
    expect(one(metric('rps', { direction: 'decrease', ...pair(6, 40, 1.3) })).m.failed).toBe(false);
  });

  it('direction either: both High and Low fail', () => {
    const up = one(metric('cpu', { direction: 'either', ...pair(7, 40, 1.3) })).m;
    const down = one(metric('cpu', { direction: 'either', ...pair(7, 40, 0.7) })).m;
    expect([up.classification, up.failed]).toEqual(['High', true]);
    expect([down.classification, down.failed]).toEqual(['Low', true]);
  });

  it('identical series → Pass', () => {
    const s = [1, 5, 2, 8, 3];
    const { m } = one(metric('x', { baseline: s, canary: [...s].reverse() }));
    expect(m.classification).toBe('Pass');
    expect(m.reason).toMatch(/identical/);
  });

  it('constant series: equal → Pass; different → the right direction', () => {
    const eq = one(metric('x', { baseline: [5, 5, 5, 5], canary: [5, 5, 5] })).m;
    expect(eq.classification).toBe('Pass');
    expect(eq.reason).toMatch(/constant at the same value/);

    const up = one(metric('x', { baseline: [5, 5, 5], canary: [6, 6, 6] })).m;
    expect(up.classification).toBe('High');
    expect(up.failed).toBe(true);
    expect(up.reason).toMatch(/both series are constant/);

    const down = one(metric('x', { baseline: [6, 6, 6], canary: [5, 5, 5] })).m;
    expect(down.classification).toBe('Low');
    expect(down.failed).toBe(false);

    // a 1% constant difference is below the effect-size gate
    const tiny = one(metric('x', { baseline: [100, 100, 100], canary: [101, 101, 101] })).m;
    expect(tiny.classification).toBe('Pass');
    expect(tiny.reason).toMatch(/within the tolerated/);
  });

  it('zero-inflated error rate: baseline all 0, canary with bursts → High', () => {
    const baseline = new Array<number>(60).fill(0);
    const canary = Array.from({ length: 60 }, (_, i) => (i % 5 === 0 ? 0.05 : 0));
    const { v, m } = one(metric('error-rate', { baseline, canary, critical: true }));
    expect(m.classification).toBe('High');
    expect(m.failed).toBe(true);
    expect(m.effectSize).toBeNull(); // unbounded: baseline mean 0
    expect(m.reason).toMatch(/baseline mean is 0/);
    expect(v.verdict).toBe('Unhealthy');
  });

  it('NaN and infinite points are dropped and reported', () => {
    const p = pair(8, 30, 1);
    const canary = [...p.canary, NaN, NaN, Infinity];
    const { m } = one(metric('x', { baseline: [NaN, ...p.baseline], canary }));
    expect(m.canary.points).toBe(30);
    expect(m.canary.droppedNonFinite).toBe(3);
    expect(m.baseline.droppedNonFinite).toBe(1);
    expect(m.classification).toBe('Pass');
    expect(m.reason).toMatch(/4 NaN\/non-finite points dropped/);
  });

  it('outliers far outside the Tukey fences are removed, and reported', () => {
    const p = pair(9, 60, 1);
    const canary = [...p.canary];
    canary[10] = 5000;
    canary[20] = 9000;
    const { m } = one(metric('x', { baseline: p.baseline, canary }));
    expect(m.canary.droppedOutliers).toBe(2);
    expect(m.canary.points).toBe(58);
    expect(m.effectSize!).toBeLessThan(1.05);
    expect(m.classification).toBe('Pass');
    expect(m.reason).toMatch(/2 outliers removed/);

    // with outliers kept, the spikes inflate the mean ratio but the rank test stays calm
    const kept = one(metric('x', { baseline: p.baseline, canary }), { outliers: 'keep' }).m;
    expect(kept.canary.droppedOutliers).toBe(0);
    expect(kept.effectSize!).toBeGreaterThan(2);
    expect(kept.classification).toBe('Pass');
  });

  it('outlier removal never takes more than 10% of a side (bursts are signal)', () => {
    const g = parkMiller(10);
    const baseline = series(g, 40, 100, 2);
    const canary = series(g, 40, 100, 2).map((v, i) => (i % 5 === 0 ? v * 10 : v)); // 20% spikes
    const { m } = one(metric('x', { baseline, canary }));
    expect(m.canary.droppedOutliers).toBe(0);
  });
});

describe('judge: effect-size gate and tolerance band', () => {
  it('a tiny but significant shift (+1% over 600 points) passes', () => {
    const { m } = one(metric('latency', pair(11, 600, 1.01, 100, 0.5)));
    expect(m.pValue!).toBeLessThan(1e-6);
    expect(m.classification).toBe('Pass');
    expect(m.reason).toMatch(/canary is higher than baseline .* within the tolerated 1\.05/);
  });

  it('allowedIncrease tolerates a +8% shift that fails without it', () => {
    const p = pair(12, 100, 1.08);
    expect(one(metric('latency', p)).m.classification).toBe('High');
    const tolerated = one(metric('latency', { ...p, allowedIncrease: 1.1 })).m;
    expect(tolerated.classification).toBe('Pass');
    expect(tolerated.reason).toMatch(/within the tolerated 1\.1/);
    expect(one(metric('latency', { ...pair(12, 100, 1.2), allowedIncrease: 1.1 })).m.classification).toBe('High');
  });

  it('allowedDecrease tolerates a −8% drop on a decrease metric (0.9 or 1.1 given)', () => {
    const p = pair(13, 100, 0.92);
    expect(one(metric('rps', { direction: 'decrease', ...p })).m.failed).toBe(true);
    expect(one(metric('rps', { direction: 'decrease', ...p, allowedDecrease: 0.9 })).m.classification).toBe('Pass');
    expect(one(metric('rps', { direction: 'decrease', ...p, allowedDecrease: 1.1 })).m.classification).toBe('Pass');
    const big = one(metric('rps', { direction: 'decrease', ...pair(13, 100, 0.8), allowedDecrease: 0.9 })).m;
    expect([big.classification, big.failed]).toEqual(['Low', true]);
  });

  it('sensitivity: high catches a +3% shift that medium and low tolerate', () => {
    const p = pair(14, 300, 1.03, 100, 2);
    expect(one(metric('latency', p), { sensitivity: 'high' }).m.classification).toBe('High');
    expect(one(metric('latency', p), { sensitivity: 'medium' }).m.classification).toBe('Pass');
    expect(one(metric('latency', p), { sensitivity: 'low' }).m.classification).toBe('Pass');
    const v = judge({ metrics: [metric('latency', p)], sensitivity: 'low' });
    expect(v.confidence).toBe(0.98);
  });

  it('high sensitivity flags a weaker signal than low (confidence level)', () => {
    // 10 vs 10 points, shift of about one sd: significant at 90% but not at 98%
    const g = parkMiller(15);
    const baseline = series(g, 10, 100, 10);
    const canary = series(g, 10, 112, 10);
    const high = one(metric('x', { baseline, canary }), { sensitivity: 'high' }).m;
    const low = one(metric('x', { baseline, canary }), { sensitivity: 'low' }).m;
    expect(high.pValue).toBe(low.pValue);
    expect(high.pValue!).toBeGreaterThan(0.02);
    expect(high.pValue!).toBeLessThanOrEqual(0.1);
    expect(high.classification).toBe('High');
    expect(low.classification).toBe('Pass');
  });
});

describe('judge: no data and sparse data', () => {
  it('empty input → NoData; all NoData without failOnNoData → verdict NoData', () => {
    const v = judge({ metrics: [metric('a', { baseline: [1, 2, 3], canary: [] }), metric('b', { baseline: [], canary: [] })] });
    expect(v.metrics.map((m) => m.classification)).toEqual(['NoData', 'NoData']);
    expect(v.metrics[0]!.reason).toMatch(/the canary returned no usable points/);
    expect(v.metrics[1]!.reason).toMatch(/no data: baseline and canary returned no usable points/);
    expect(v.metrics.every((m) => !m.failed)).toBe(true);
    expect(v.verdict).toBe('NoData');
    expect(v.score).toBe(0);
    expect(v.metrics[0]!.pValue).toBeNull();
  });

  it('failOnNoData: NoData counts as failed; all NoData → Unhealthy', () => {
    const v = judge({ metrics: [metric('a', { baseline: [1, 2, 3], canary: [NaN, NaN] })], failOnNoData: true });
    expect(v.metrics[0]!.classification).toBe('NoData');
    expect(v.metrics[0]!.failed).toBe(true);
    expect(v.verdict).toBe('Unhealthy');
  });

  it('NoData next to data: left out of the score, or failed with failOnNoData', () => {
    const metrics = [metric('ok', pair(16, 30, 1)), metric('missing', { baseline: [1, 2, 3], canary: [] })];
    const lenient = judge({ metrics });
    expect(lenient.verdict).toBe('Healthy');
    expect(lenient.score).toBe(100);
    expect(lenient.reason).toMatch(/1 metric without enough data left out \(missing\)/);
    const strict = judge({ metrics, failOnNoData: true });
    expect(strict.score).toBe(50);
    expect(strict.verdict).toBe('Unhealthy');
  });

  it('sparse input is NoData with its own reason, never a pass', () => {
    const { v, m } = one(metric('x', { baseline: [1, 2, 3, 4], canary: [9, 9] }));
    expect(m.classification).toBe('NoData');
    expect(m.reason).toMatch(/too few points to judge: baseline 4, canary 2; at least 3/);
    expect(v.verdict).toBe('NoData');
    // NaN do not count towards minPoints
    const nan = one(metric('x', { baseline: [1, 2, 3], canary: [1, NaN, 2, NaN] })).m;
    expect(nan.classification).toBe('NoData');
    // a custom minimum
    const custom = one(metric('x', pair(17, 8, 1)), { minPoints: 10 }).m;
    expect(custom.classification).toBe('NoData');
    expect(custom.reason).toMatch(/at least 10/);
  });

  it('a critical metric without data forces Unhealthy under failOnNoData', () => {
    const metrics = [
      ...Array.from({ length: 30 }, (_, i) => metric(`m${i}`, pair(100 + i, 30, 1))),
      metric('error-rate', { critical: true, baseline: [0, 0, 0], canary: [] }),
    ];
    expect(judge({ metrics }).verdict).toBe('Healthy');
    const v = judge({ metrics, failOnNoData: true });
    expect(v.verdict).toBe('Unhealthy');
    expect(v.reason).toMatch(/critical metric error-rate failed/);
  });

  it('no metrics at all → NoData', () => {
    expect(judge({ metrics: [] }).verdict).toBe('NoData');
    expect(judge({ metrics: [], failOnNoData: true }).verdict).toBe('Unhealthy');
  });
});

describe('judge: score and verdict', () => {
  const passing = (n: number) => Array.from({ length: n }, (_, i) => metric(`ok${i}`, pair(200 + i, 40, 1)));

  it('a failing critical metric forces Unhealthy even with a high score', () => {
    const metrics = [...passing(20), metric('error-rate', { critical: true, ...pair(300, 40, 1.5) })];
    const v = judge({ metrics });
    expect(v.metrics.filter((m) => m.failed).map((m) => m.name)).toEqual(['error-rate']);
    expect(v.score).toBeCloseTo((100 * 20) / 21, 2);
    expect(v.score).toBeGreaterThanOrEqual(95);
    expect(v.verdict).toBe('Unhealthy');
    expect(v.reason).toMatch(/^critical metric error-rate failed \(High: /);
    // the same failure on a non-critical metric leaves the verdict Healthy
    const nonCritical = judge({ metrics: [...passing(20), metric('error-rate', pair(300, 40, 1.5))] });
    expect(nonCritical.verdict).toBe('Healthy');
  });

  it('thresholds: ≥95 Healthy, ≥75 MediumHealthy, below Unhealthy', () => {
    const bad = (name: string) => metric(name, pair(400, 40, 1.5));
    const four = judge({ metrics: [...passing(4), bad('b1')] });
    expect(four.score).toBe(80);
    expect(four.verdict).toBe('MediumHealthy');
    expect(four.reason).toMatch(/score 80 \(4 of 5 metrics passed\) is below 95 but at least 75; failed: b1/);
    const half = judge({ metrics: [...passing(1), bad('b1')] });
    expect(half.verdict).toBe('Unhealthy');
    const custom = judge({ metrics: [...passing(4), bad('b1')], thresholds: { healthy: 80, marginal: 50 } });
    expect(custom.verdict).toBe('Healthy');
  });

  it('weights: the score is the weighted share of passing metrics', () => {
    const v = judge({ metrics: [metric('ok', { ...pair(500, 40, 1), weight: 3 }), metric('bad', { ...pair(501, 40, 1.5), weight: 1 })] });
    expect(v.score).toBe(75);
    expect(v.verdict).toBe('MediumHealthy');
    expect(v.reason).toMatch(/by weight/);
    expect(() => judge({ metrics: [metric('x', { baseline: [1], canary: [1], weight: -1 })] })).toThrow(RangeError);
  });

  it('the result is JSON-serialisable and matches the contract shape', () => {
    const v = judge({ metrics: [metric('a', pair(600, 20, 1.4)), metric('b', { baseline: [], canary: [1] })] });
    const json = JSON.parse(JSON.stringify(v)) as Record<string, unknown>;
    expect(Object.keys(json)).toEqual(expect.arrayContaining(['verdict', 'score', 'metrics', 'reason']));
    const m = (json.metrics as Array<Record<string, unknown>>)[0]!;
    expect(Object.keys(m)).toEqual(
      expect.arrayContaining(['name', 'classification', 'baseline', 'canary', 'pValue', 'statistic', 'effectSize', 'reason']),
    );
    expect(m.baseline).toMatchObject({ points: 20 });
    expect(typeof (m.canary as { median: unknown }).median).toBe('number');
  });

  it('is deterministic', () => {
    const input = { metrics: [metric('a', pair(700, 600, 1.02)), metric('b', pair(701, 600, 1))] };
    expect(judge(input)).toEqual(judge(input));
  });
});

describe('formatVerdict', () => {
  it('prints the verdict line and a table row per metric', () => {
    const v = judge({
      metrics: [
        metric('error-rate', { critical: true, ...pair(800, 20, 1) }),
        metric('p95-latency', pair(801, 20, 1.5)),
        metric('rps', { baseline: [], canary: [] }),
      ],
    });
    const lines = formatVerdict(v);
    expect(lines[0]).toMatch(/^verification Unhealthy, score 50: /);
    expect(lines[1]).toMatch(/^metric\s+base n\s+base median\s+canary n\s+canary median\s+p-value\s+result\s+reason$/);
    expect(lines[2]).toMatch(/^error-rate \*\s+20\s+[\d.]+\s+20\s+[\d.]+\s+[\d.]+\s+Pass\s+/);
    expect(lines[3]).toMatch(/^p95-latency\s+20\s+[\d.]+\s+20\s+[\d.]+\s+<?[\d.]+\s+High FAIL\s+canary is higher/);
    expect(lines[4]).toMatch(/^rps\s+0\s+-\s+0\s+-\s+-\s+NoData\s+no data/);
    expect(lines[5]).toBe('(* critical metric)');
    // columns line up
    const col = lines[1]!.indexOf('p-value');
    expect(lines[2]!.slice(0, col).length).toBe(col);
  });
});
