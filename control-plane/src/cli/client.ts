/** The CLI's HTTP client: one function per call shape, errors as CliError with the API's code. */
import fs from 'node:fs';
import path from 'node:path';

export class CliError extends Error {
  constructor(readonly code: string, message: string, readonly exitCode = 1, readonly details?: unknown) {
    super(message);
  }
}

export interface ClientOptions {
  url: string;
  token?: string;
}

export function resolveClientOptions(o: { url?: string; token?: string }): ClientOptions {
  const url = (o.url ?? process.env.FERRY_URL ?? 'http://127.0.0.1:8080').replace(/\/+$/, '');
  let token = o.token ?? process.env.FERRY_TOKEN;
  if (!token) {
    const file = path.join(process.env.FERRY_DATA_DIR ?? './.ferry', 'admin-token');
    try {
      token = fs.readFileSync(file, 'utf8').trim();
    } catch {
      /* no token: the server will answer 401 */
    }
  }
  return { url, ...(token ? { token } : {}) };
}

export class Client {
  constructor(readonly opts: ClientOptions) {}

  async request<T = unknown>(method: string, route: string, body?: unknown, contentType?: string): Promise<T> {
    const res = await this.raw(method, route, body, contentType);
    const text = await res.text();
    if (!res.ok) throw errorFrom(res.status, text);
    if (!text) return undefined as T;
    const ct = res.headers.get('content-type') ?? '';
    return (ct.includes('json') ? JSON.parse(text) : text) as T;
  }

  async raw(method: string, route: string, body?: unknown, contentType?: string, extraHeaders: Record<string, string> = {}): Promise<Response> {
    const headers: Record<string, string> = { ...extraHeaders };
    if (this.opts.token) headers.authorization = `Bearer ${this.opts.token}`;
    let payload: string | Uint8Array | undefined;
    if (body !== undefined) {
      if (typeof body === 'string' || body instanceof Uint8Array) {
        payload = body;
        headers['content-type'] = contentType ?? 'text/plain';
      } else {
        payload = JSON.stringify(body);
        headers['content-type'] = 'application/json';
      }
    }
    try {
      return await fetch(`${this.opts.url}${route}`, { method, headers, body: payload });
    } catch (err) {
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      throw new CliError('UNREACHABLE', `cannot reach ${this.opts.url}: ${cause?.code ?? cause?.message ?? (err as Error).message}`);
    }
  }

  get<T = unknown>(route: string): Promise<T> { return this.request<T>('GET', route); }
  post<T = unknown>(route: string, body?: unknown): Promise<T> { return this.request<T>('POST', route, body ?? {}); }
  put<T = unknown>(route: string, body?: unknown, contentType?: string): Promise<T> { return this.request<T>('PUT', route, body, contentType); }
  delete<T = unknown>(route: string): Promise<T> { return this.request<T>('DELETE', route); }
}

export function errorFrom(status: number, text: string): CliError {
  try {
    const j = JSON.parse(text) as { error?: { code?: string; message?: string; details?: unknown } };
    if (j.error?.code) return new CliError(j.error.code, j.error.message ?? `HTTP ${status}`, 1, j.error.details);
  } catch { /* not JSON */ }
  return new CliError(`HTTP_${status}`, text.slice(0, 200) || `HTTP ${status}`);
}

export const q = (params: Record<string, string | number | boolean | undefined | null>): string => {
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') s.set(k, String(v));
  const t = s.toString();
  return t ? `?${t}` : '';
};
