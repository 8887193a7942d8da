/**
 * http: one request with fetch; logs the request line, the status line and the body
 * (truncated, masked). Fails with StepFailed when the status or body is not what the
 * step expects.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { HttpSpec } from '@ferry/shared';
import { failed, type TaskContext, type TaskHandler, type TaskOutcome } from './types.js';

/** Body bytes logged; the whole body (up to MAX_MATCH_BYTES) is still matched. */
const MAX_LOGGED_BODY = 64 * 1024;
const MAX_MATCH_BYTES = 4 << 20;
const MAX_LOGGED_LINES = 200;

export function statusAccepted(status: number, expect: readonly number[] | undefined): boolean {
  if (!expect || expect.length === 0) return status >= 200 && status <= 299;
  return expect.includes(status);
}

async function readBody(res: Response, limit: number): Promise<{ text: string; truncated: boolean }> {
  if (!res.body) return { text: '', truncated: false };
  const reader = res.body.getReader();
  const parts: Uint8Array[] = [];
  let size = 0;
  let truncated = false;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (size + value.length > limit) {
      parts.push(value.subarray(0, limit - size));
      size = limit;
      truncated = true;
      await reader.cancel().catch(() => undefined);
      break;
    }
    parts.push(value);
    size += value.length;
  }
  return { text: Buffer.concat(parts).toString('utf8'), truncated };
}

export function createHttpHandler(): TaskHandler<HttpSpec> {
  async function run(ctx: TaskContext<HttpSpec>): Promise<TaskOutcome> {
    const { spec, log, signal, masker } = ctx;
    const method = (spec.method ?? 'GET').toUpperCase();
    let url: URL;
    try {
      url = new URL(spec.url);
    } catch {
      return failed('StepFailed', `invalid URL: ${masker.mask(spec.url)}`);
    }
    let expectBody: RegExp | undefined;
    if (spec.expectBody !== undefined) {
      try {
        expectBody = new RegExp(spec.expectBody);
      } catch (err) {
        return failed('StepFailed', `invalid expectBody: ${(err as Error).message}`);
      }
    }
    // Lazily loaded, on the request path only (see http-report.ts).
    const report = await import('./http-report.js');
    log.line(0, `> ${method} ${url.toString()}`);
    const t0 = Date.now();
    let res: Response;
    try {
      res = await fetch(url, {
        method,
        headers: spec.headers,
        body: spec.body !== undefined && method !== 'GET' && method !== 'HEAD' ? spec.body : undefined,
        signal,
        redirect: 'follow',
      });
    } catch (err) {
      if (signal.aborted) return failed('StepFailed', 'request aborted');
      const e = err as Error & { cause?: { code?: string; message?: string } };
      const why = e.cause?.code ? `${e.cause.code}${e.cause.message ? `: ${e.cause.message}` : ''}` : e.cause?.message ?? e.message;
      log.line(1, `request failed: ${why}`);
      return failed('StepFailed', masker.mask(`${method} ${url.toString()} failed: ${why}`));
    }
    log.line(0, report.statusLine(res.status, res.statusText, Date.now() - t0));
    let body: { text: string; truncated: boolean };
    try {
      body = await readBody(res, MAX_MATCH_BYTES);
    } catch (err) {
      if (signal.aborted) return failed('StepFailed', 'request aborted');
      return failed('StepFailed', `reading the response body failed: ${(err as Error).message}`, { exitCode: null });
    }
    const shown = body.text.slice(0, MAX_LOGGED_BODY).split(/\r?\n/);
    if (shown.length > 0 && shown[shown.length - 1] === '') shown.pop();
    for (const l of shown.slice(0, MAX_LOGGED_LINES)) log.line(0, l);
    if (shown.length > MAX_LOGGED_LINES || body.text.length > MAX_LOGGED_BODY || body.truncated) log.note('ferry: response body truncated in the log');

    const outputs = { status: String(res.status) };
    if (!statusAccepted(res.status, spec.expectStatus)) {
      const want = spec.expectStatus?.length ? spec.expectStatus.join(', ') : '200-299';
      return failed('StepFailed', `status ${res.status}, expected ${want}`, { outputs });
    }
    if (expectBody && !expectBody.test(body.text)) {
      return failed('StepFailed', `response body does not match ${spec.expectBody}`, { outputs });
    }
    return { status: 'Succeeded', exitCode: null, outputs };
  }

  return {
    kind: 'http',
    run,
    async selfCheck() {
      const server = createServer((_req, res) => {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('ok');
      });
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', () => resolve());
      });
      try {
        const { port } = server.address() as AddressInfo;
        const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(5000) });
        const text = await res.text();
        if (res.status !== 200 || text !== 'ok') throw new Error(`local request gave ${res.status}`);
      } finally {
        server.closeAllConnections();
        await new Promise((r) => server.close(r));
      }
    },
  };
}
