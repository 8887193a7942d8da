/**
 * verify: collects Prometheus series for the control plane's canary judge. It waits out
 * the window (durationMs from the task's start), then asks query_range once per metric
 * and role over the window with step = intervalMs. The delegate only collects.
 */
import type { VerifySpec } from '@ferry/shared';
import { failed, sleep, type TaskContext, type TaskHandler, type TaskOutcome } from './types.js';

export interface MetricSeries {
  name: string;
  role: string;
  /** values of the first series, in time order, NaN/Inf left out */
  points: number[];
  /** how many samples were left out as not numbers */
  nulls: number;
  /** number of series the query returned */
  series: number;
  error?: string;
}

export interface VerifyData {
  start: number;
  end: number;
  stepSeconds: number;
  metrics: MetricSeries[];
}

/** Reads a Prometheus query_range answer. Throws on a malformed or error answer. */
export function parseQueryRange(body: unknown): { points: number[]; nulls: number; series: number } {
  const b = body as { status?: string; error?: string; errorType?: string; data?: { resultType?: string; result?: unknown } };
  if (!b || typeof b !== 'object') throw new Error('not a JSON object');
  if (b.status !== 'success') throw new Error(`prometheus: ${b.errorType ?? 'error'}: ${b.error ?? 'unknown error'}`);
  const result = b.data?.result;
  if (!Array.isArray(result)) throw new Error('no data.result in the answer');
  const first = result[0] as { values?: unknown } | undefined;
  const points: number[] = [];
  let nulls = 0;
  if (first && Array.isArray(first.values)) {
    for (const pair of first.values) {
      const v = Array.isArray(pair) ? Number(pair[1]) : NaN;
      if (Number.isFinite(v)) points.push(v);
      else nulls += 1;
    }
  }
  return { points, nulls, series: result.length };
}

const substituteRole = (query: string, role: string): string => query.replace(/\$role\b|\$\{role\}/g, role);

export function createVerifyHandler(): TaskHandler<VerifySpec> {
  async function run(ctx: TaskContext<VerifySpec>): Promise<TaskOutcome> {
    const { spec, log, signal } = ctx;
    const base = spec.source.url.replace(/\/+$/, '');
    const windowEnd = ctx.startedAt + spec.durationMs;
    log.line(0, `collecting ${spec.metrics.length} metric(s) for role(s) ${spec.roles.join(', ') || '(none)'} from ${base} for ${spec.durationMs}ms`);
    if (!(await sleep(Math.max(0, windowEnd - Date.now()), signal))) {
      return failed('Verification', 'verification canceled before its window ended');
    }
    const stepSeconds = Math.max(0.001, spec.intervalMs / 1000);
    const end = Date.now() / 1000;
    const start = Math.min(ctx.startedAt / 1000, end);
    const roles = spec.roles.length > 0 ? spec.roles : [''];
    const headers: Record<string, string> = { accept: 'application/json' };
    const bearer = spec.source.bearerToken ?? (spec.source.bearerTokenSecret ? ctx.assign.secrets[spec.source.bearerTokenSecret] : undefined);
    if (spec.source.bearerTokenSecret && !bearer) log.line(2, `secret ${spec.source.bearerTokenSecret} was not sent with the task; querying without a token`);
    if (bearer) headers.authorization = `Bearer ${bearer}`;

    const metrics: MetricSeries[] = [];
    let unreachable: string | undefined;
    for (const m of spec.metrics) {
      for (const role of roles) {
        if (signal.aborted) return failed('Verification', 'verification canceled');
        const q = new URLSearchParams({ query: substituteRole(m.query, role), start: start.toFixed(3), end: end.toFixed(3), step: String(stepSeconds) });
        const entry: MetricSeries = { name: m.name, role, points: [], nulls: 0, series: 0 };
        try {
          const res = await fetch(`${base}/api/v1/query_range?${q.toString()}`, {
            headers,
            signal: AbortSignal.any([signal, AbortSignal.timeout(30_000)]),
          });
          const text = await res.text();
          let json: unknown;
          try {
            json = JSON.parse(text);
          } catch {
            throw new Error(`HTTP ${res.status}: not JSON`);
          }
          Object.assign(entry, parseQueryRange(json));
        } catch (err) {
          const e = err as Error & { cause?: { code?: string } };
          if (e.name === 'TypeError' || e.name === 'TimeoutError' || e.cause?.code) {
            unreachable = `prometheus at ${base} unreachable: ${e.cause?.code ?? e.message}`;
          }
          entry.error = e.message.slice(0, 1000);
        }
        metrics.push(entry);
        if (entry.series > 1) log.line(2, `${m.name}${role ? ` [${role}]` : ''}: the query returned ${entry.series} series; only the first is judged (aggregate the query, e.g. with sum())`);
        log.line(entry.error ? 1 : 0, `${m.name}${role ? ` [${role}]` : ''}: ${entry.points.length} point(s)${entry.nulls ? `, ${entry.nulls} not a number` : ''}${entry.error ? `; error: ${entry.error}` : ''}`);
        if (unreachable) break;
      }
      if (unreachable) break;
    }
    const data: VerifyData = { start: Math.round(start * 1000), end: Math.round(end * 1000), stepSeconds, metrics };
    if (unreachable) return failed('Verification', unreachable, { data });
    return { status: 'Succeeded', exitCode: null, outputs: {}, data };
  }

  return {
    kind: 'verify',
    run,
    async selfCheck() {
      const canned = { status: 'success', data: { resultType: 'matrix', result: [{ metric: {}, values: [[1, '0.5'], [2, 'NaN'], [3, '1']] }] } };
      const r = parseQueryRange(JSON.parse(JSON.stringify(canned)));
      if (r.points.length !== 2 || r.points[0] !== 0.5 || r.nulls !== 1) throw new Error('query_range parsing self-check failed');
      if (substituteRole('x{role="$role"}', 'canary') !== 'x{role="canary"}') throw new Error('role substitution self-check failed');
    },
  };
}
