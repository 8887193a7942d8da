// Canary judge: time of one judge() call over 50 metrics x (baseline + canary) x 600 points
// (a 5-minute verify window at 0.5 s resolution, or 2.5 h at 15 s), on the built module.
// Baseline, measured in the same run: a plain sort of the same 60,000 numbers
// (Float64Array copy + sort) — the floor for anything rank-based over that data.
// Target: well under a second per judge call (p99 < 1000 ms).
import { judge } from '../../control-plane/dist/verification/index.js';

const METRICS = 50;
const POINTS = 600;
const RUNS = Number(process.env.BENCH_RUNS ?? 40);
const WARMUP = 5;

// Deterministic data: mulberry32 seeded PRNG.
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rnd = mulberry32(20261122);
const gauss = () => Math.sqrt(-2 * Math.log(1 - rnd())) * Math.cos(2 * Math.PI * rnd());

// A realistic mix: latency-like (log-normal, continuous), counters (integers, many ties),
// error rates (mostly 0 with bursts), some canaries shifted, a few NaN gaps.
const metrics = [];
for (let m = 0; m < METRICS; m++) {
  const kind = m % 4;
  const shift = m % 5 === 0 ? 1.2 : m % 7 === 0 ? 1.02 : 1;
  const gen = (factor) => {
    const out = new Array(POINTS);
    for (let i = 0; i < POINTS; i++) {
      let v;
      if (kind === 0) v = 100 * factor * Math.exp(0.25 * gauss());
      else if (kind === 1) v = Math.round(50 * factor + 7 * gauss());
      else if (kind === 2) v = rnd() < 0.1 * factor ? 0.01 + 0.05 * rnd() : 0;
      else v = 500 * factor + 40 * gauss();
      out[i] = i % 97 === 13 ? Number.NaN : v;
    }
    return out;
  };
  metrics.push({
    name: `metric-${m}`,
    direction: m % 3 === 0 ? 'either' : m % 3 === 1 ? 'increase' : 'decrease',
    critical: m === 0,
    baseline: gen(1),
    canary: gen(shift),
  });
}
const input = { metrics, sensitivity: 'medium', failOnNoData: true };
const all = metrics.flatMap((m) => [...m.baseline, ...m.canary]);

function time(fn) {
  for (let i = 0; i < WARMUP; i++) fn();
  const samples = [];
  for (let i = 0; i < RUNS; i++) {
    const t0 = process.hrtime.bigint();
    fn();
    samples.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  samples.sort((a, b) => a - b);
  const q = (p) => samples[Math.min(samples.length - 1, Math.ceil(p * samples.length) - 1)];
  return { p50: q(0.5), p99: q(0.99) };
}

let verdict;
const j = time(() => {
  verdict = judge(input);
});
let sink = 0;
const b = time(() => {
  const a = Float64Array.from(all);
  a.sort();
  sink += a[a.length >> 1] || 0;
});

const fmt = (ms) => (ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2));
const counts = {};
for (const m of verdict.metrics) counts[m.classification] = (counts[m.classification] ?? 0) + 1;
console.log(
  `data: ${METRICS} metrics, ${all.length} numbers; verdict ${verdict.verdict} score ${verdict.score}; ` +
    Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(', ') +
    `; ${RUNS} runs after ${WARMUP} warm-up${sink === -1 ? '' : ''}`,
);
const ratio = j.p50 / b.p50;
const pass = j.p99 < 1000;
console.log(
  `judge: ${METRICS} metrics x 2 x ${POINTS} points: ${fmt(j.p50)} ms/judge (p99 ${fmt(j.p99)} ms); ` +
    `baseline sort of the same ${all.length} numbers ${fmt(b.p50)} ms; ratio ${ratio.toFixed(2)}x; ` +
    `target < 1000 ms: ${pass ? 'PASS' : 'MISS'}`,
);
