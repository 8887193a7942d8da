/**
 * A private Prometheus (Debian's /usr/bin/prometheus) scraping given targets, for canary
 * verification tests. Each call starts its own, with its TSDB in a temp dir.
 *
 *   describeWithPrometheus('canary verification', () => {
 *     it('…', async () => {
 *       const prom = await startPrometheus({ targets: [`127.0.0.1:${app.port}`], interval: '1s' });
 *       await prom.waitForTargetsUp();
 *       …
 *       await prom.stop();
 *     });
 *   });
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, inject } from 'vitest';
import { prometheusUnavailableReason, PROMETHEUS_BIN } from './prometheus-bin.js';
import type { ProvidedPrometheus } from './provided.js';
import { freePort, makeTempDir, sleep, spawnTracked, type ExitInfo, type TrackedProcess } from './spawn.js';

export { PROMETHEUS_BIN, prometheusUnavailableReason } from './prometheus-bin.js';

const provided: ProvidedPrometheus = inject('ferryPrometheus') ?? (() => {
  const reason = prometheusUnavailableReason();
  return { available: !reason, reason: reason ?? '', bin: PROMETHEUS_BIN };
})();

export const prometheusAvailable: boolean = provided.available;
export const prometheusSkipReason: string = provided.reason;

/** `describe` that runs only when Prometheus is installed, and says loudly why not. */
export function describeWithPrometheus(name: string, fn: () => void): void {
  if (!prometheusAvailable) console.warn(`[ferry tests] SKIPPING Prometheus suite "${name}": ${prometheusSkipReason}`);
  describe.skipIf(!prometheusAvailable)(`${name}${prometheusAvailable ? '' : ` (skipped: ${prometheusSkipReason})`}`, fn);
}

export interface ScrapeJob {
  job: string;
  /** host:port */
  targets: string[];
  /** default /metrics */
  metricsPath?: string;
  /** labels added to every series of the job */
  labels?: Record<string, string>;
}

export interface StartPrometheusOptions {
  /** host:port targets of one job named `ferry-test` (or give `jobs`) */
  targets?: string[];
  jobs?: ScrapeJob[];
  /** scrape and evaluation interval, default '1s' */
  interval?: string;
  /** default /metrics (for `targets`) */
  metricsPath?: string;
  /** how long to wait for /-/ready, default 30 s */
  timeout?: number;
}

export interface PromQueryResult {
  resultType: string;
  result: { metric: Record<string, string>; value?: [number, string]; values?: [number, string][] }[];
}

export class PrometheusHandle {
  constructor(readonly proc: TrackedProcess, readonly port: number, readonly dir: string, readonly configFile: string) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get pid(): number {
    return this.proc.pid;
  }

  /** Instant query (`/api/v1/query`); throws unless Prometheus answers success. */
  async query(promql: string, time?: number): Promise<PromQueryResult> {
    const params = new URLSearchParams({ query: promql });
    if (time !== undefined) params.set('time', String(time / 1000));
    return this.api<PromQueryResult>(`/api/v1/query?${params}`);
  }

  /** Range query (`/api/v1/query_range`); times in epoch ms, step like '1s'. */
  async queryRange(promql: string, startMs: number, endMs: number, step = '1s'): Promise<PromQueryResult> {
    const params = new URLSearchParams({ query: promql, start: String(startMs / 1000), end: String(endMs / 1000), step });
    return this.api<PromQueryResult>(`/api/v1/query_range?${params}`);
  }

  /** Active targets as Prometheus sees them. */
  async targets(): Promise<{ scrapeUrl: string; health: string; lastError: string }[]> {
    const data = await this.api<{ activeTargets: { scrapeUrl: string; health: string; lastError: string }[] }>('/api/v1/targets?state=active');
    return data.activeTargets;
  }

  /** Wait until every target (at least `count`) has been scraped successfully. */
  async waitForTargetsUp(opts: { count?: number; timeout?: number } = {}): Promise<void> {
    const end = Date.now() + (opts.timeout ?? 30_000);
    let last: { scrapeUrl: string; health: string; lastError: string }[] = [];
    while (Date.now() < end) {
      try {
        last = await this.targets();
        if (last.length >= (opts.count ?? 1) && last.every((t) => t.health === 'up')) return;
      } catch { /* not ready yet */ }
      await sleep(250);
    }
    throw new Error(`Prometheus targets not up: ${JSON.stringify(last)}`);
  }

  private async api<T>(path: string): Promise<T> {
    const res = await fetch(`${this.url}${path}`);
    const body = (await res.json()) as { status: string; data: T; error?: string };
    if (body.status !== 'success') throw new Error(`Prometheus ${path}: ${body.error ?? res.status}`);
    return body.data;
  }

  /** SIGTERM and wait for it to exit. */
  async stop(timeoutMs = 30_000): Promise<ExitInfo | undefined> {
    this.proc.signal('SIGTERM');
    const info = await this.proc.waitExit(timeoutMs);
    if (!info || !(await this.proc.waitGone(5_000))) await this.proc.killHard();
    this.proc.untrack();
    return info;
  }

  async kill(): Promise<void> {
    await this.proc.killHard();
    this.proc.untrack();
  }
}

function configYaml(jobs: ScrapeJob[], interval: string): string {
  // JSON is valid YAML: no YAML dependency needed
  return JSON.stringify({
    global: { scrape_interval: interval, scrape_timeout: interval, evaluation_interval: interval },
    scrape_configs: jobs.map((j) => ({
      job_name: j.job,
      metrics_path: j.metricsPath ?? '/metrics',
      static_configs: [{ targets: j.targets, ...(j.labels ? { labels: j.labels } : {}) }],
    })),
  }, null, 2);
}

export async function startPrometheus(opts: StartPrometheusOptions = {}): Promise<PrometheusHandle> {
  if (!prometheusAvailable) throw new Error(`Prometheus not available: ${prometheusSkipReason}`);
  const jobs = opts.jobs ?? [{ job: 'ferry-test', targets: opts.targets ?? [], metricsPath: opts.metricsPath }];
  const dir = makeTempDir('ferry-prometheus-');
  const configFile = join(dir, 'prometheus.yml');
  writeFileSync(configFile, configYaml(jobs, opts.interval ?? '1s'));
  const timeout = opts.timeout ?? 30_000;
  let lastOutput = '';
  for (let tries = 0; tries < 3; tries++) {
    const port = await freePort();
    const proc = spawnTracked(provided.bin || PROMETHEUS_BIN, [
      `--config.file=${configFile}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--web.enable-lifecycle',
      '--log.level=warn',
    ], { name: `prometheus :${port}`, cwd: dir, logFile: join(dir, 'prometheus.log') });
    const handle = new PrometheusHandle(proc, port, dir, configFile);
    const end = Date.now() + timeout;
    while (Date.now() < end && !proc.hasExited) {
      try {
        const res = await fetch(`${handle.url}/-/ready`);
        if (res.ok) return handle;
      } catch { /* not listening yet */ }
      await sleep(100);
    }
    lastOutput = proc.output.tail(40);
    await proc.killHard().catch(() => {});
    proc.untrack();
    if (!/address already in use/i.test(lastOutput)) break;
  }
  throw new Error(`Prometheus did not become ready:\n${lastOutput}`);
}
