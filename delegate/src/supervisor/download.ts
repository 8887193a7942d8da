/**
 * Fetches a release bundle from the control plane with the delegate token, unpacks its
 * root files into a temp folder and checks the worker: its sha256 must equal the digest
 * the control plane sent in the `upgrade` frame AND the one in the bundle's manifest
 * (and the `x-ferry-sha256` header when present). Any mismatch is an UpgradeRefused.
 */
import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import * as tar from 'tar';
import { readManifest, sha256File, type Manifest } from './versions.js';

/** A refusal with a reason meant for the operator (sent as upgrade.status error). */
export class UpgradeRefused extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UpgradeRefused';
  }
}

export const MAX_BUNDLE_BYTES = 512 << 20;

export interface FetchBundleOptions {
  /** control plane base URL (http(s) or ws(s)) */
  baseUrl: string;
  /** the `url` of the upgrade frame, below the base */
  path: string;
  token: string;
  version: string;
  /** the worker's sha256 from the upgrade frame */
  sha256: string;
  /** a fresh empty folder; the bundle's root files land in `dir/files` */
  dir: string;
  timeoutMs?: number;
  signal?: AbortSignal;
  /** called once the file is downloaded, before it is unpacked and checked */
  onDownloaded?: (bytes: number) => void;
}

export function httpBase(url: string): string {
  return url.replace(/^ws(s?):/i, 'http$1:').replace(/\/+$/, '');
}

/** Downloads, unpacks and verifies. Resolves with the folder holding manifest.json and the worker. */
export async function fetchBundle(o: FetchBundleOptions): Promise<{ dir: string; manifest: Manifest; bytes: number }> {
  const url = /^https?:\/\//i.test(o.path) ? o.path : `${httpBase(o.baseUrl)}${o.path.startsWith('/') ? '' : '/'}${o.path}`;
  const signals = [AbortSignal.timeout(o.timeoutMs ?? 5 * 60_000), ...(o.signal ? [o.signal] : [])];
  let res: Response;
  try {
    res = await fetch(url, { headers: { authorization: `Bearer ${o.token}` }, signal: AbortSignal.any(signals) });
  } catch (err) {
    const e = err as Error & { cause?: { code?: string; message?: string } };
    throw new Error(`downloading ${url} failed: ${e.cause?.code ?? e.cause?.message ?? e.message}`);
  }
  if (!res.ok || !res.body) {
    const body = (await res.text().catch(() => '')).slice(0, 500);
    let msg = body;
    try {
      msg = (JSON.parse(body) as { error?: { message?: string } }).error?.message ?? body;
    } catch { /* not JSON */ }
    const e = new Error(`downloading ${url} failed: HTTP ${res.status}${msg ? `: ${msg}` : ''}`);
    // 4xx: the server will not give us this bundle; 5xx/timeouts may pass
    if (res.status >= 400 && res.status < 500) throw new UpgradeRefused(e.message);
    throw e;
  }
  const declared = Number(res.headers.get('content-length') ?? 0);
  if (declared > MAX_BUNDLE_BYTES) throw new UpgradeRefused(`the bundle is ${declared} bytes, more than ${MAX_BUNDLE_BYTES}`);
  const headerSha = res.headers.get('x-ferry-sha256')?.trim().toLowerCase();

  const file = join(o.dir, 'bundle.tgz');
  let bytes = 0;
  const counted = Readable.fromWeb(res.body as WebReadableStream<Uint8Array>);
  counted.on('data', (c: Buffer) => {
    bytes += c.length;
    if (bytes > MAX_BUNDLE_BYTES) counted.destroy(new UpgradeRefused(`the bundle is larger than ${MAX_BUNDLE_BYTES} bytes`));
  });
  await pipeline(counted, createWriteStream(file));
  o.onDownloaded?.(bytes);

  const files = join(o.dir, 'files');
  await mkdir(files, { recursive: true });
  try {
    await tar.x({
      file,
      cwd: files,
      strict: true,
      // root files only: manifest.json and the one-file worker
      filter: (p, entry) => {
        const name = p.replace(/^(\.\/)+/, '');
        return (entry as { type?: string }).type === 'File' && name.length > 0 && !name.includes('/');
      },
    });
  } catch (err) {
    throw new UpgradeRefused(`the bundle is not a gzipped tar: ${(err as Error).message}`);
  }

  let manifest: Manifest;
  try {
    manifest = readManifest(files);
  } catch (err) {
    throw new UpgradeRefused(`bad bundle: ${(err as Error).message}`);
  }
  if (manifest.version !== o.version) throw new UpgradeRefused(`the bundle is version ${manifest.version}, not ${o.version}`);
  let actual: string;
  try {
    actual = await sha256File(join(files, manifest.entry));
  } catch {
    throw new UpgradeRefused(`the worker ${manifest.entry} named by manifest.json is not in the bundle`);
  }
  const want = o.sha256.toLowerCase();
  if (actual !== want) throw new UpgradeRefused(`sha256 mismatch: the worker ${manifest.entry} of ${o.version} has sha256 ${actual}, the control plane says ${want}`);
  if (actual !== manifest.sha256) throw new UpgradeRefused(`sha256 mismatch: the worker ${manifest.entry} of ${o.version} has sha256 ${actual}, its manifest says ${manifest.sha256}`);
  if (headerSha && headerSha !== want) throw new UpgradeRefused(`sha256 mismatch: the download says ${headerSha}, the upgrade offer ${want}`);
  return { dir: files, manifest, bytes };
}
