/**
 * Releases: delegate bundles `ferry-delegate-VERSION.tgz` (CONTRACT §8). Publishing reads
 * the gzipped tar in memory (it is bounded by FERRY_BUNDLE_LIMIT), checks the manifest and
 * the worker's digest, and keeps the file under `$FERRY_DATA_DIR/releases/`. The digest
 * recorded is the worker's (what the supervisor checks after download); the bundle
 * file's own digest is kept in the manifest column as `bundleSha256`.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Parser, type ReadEntry } from 'tar';
import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { FerryError, SUPPORTED_PROTOCOLS } from '@ferry/shared';
import type { Kysely } from 'kysely';
import type { DB, Executor } from '../store/db.js';
import type { ReleasesTable } from '../store/schema.js';

export const VERSION_PATTERN = '^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$';
const VERSION_RE = new RegExp(VERSION_PATTERN);

export const Manifest = Type.Object({
  version: Type.String({ pattern: VERSION_PATTERN }),
  protocol: Type.Integer({ minimum: 0 }),
  entry: Type.String({ minLength: 1, maxLength: 255 }),
  sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }),
  builtAt: Type.String({ minLength: 1 }),
});
export type Manifest = Static<typeof Manifest>;

export interface ReleaseView {
  version: string;
  sha256: string;
  protocol: number;
  publishedAt: string;
  publishedBy: string;
  builtAt: string | null;
  size: number;
  bundleSha256: string | null;
}

export interface Bundle {
  manifest: Manifest;
  /** sha256 of the worker file, as computed here */
  workerSha256: string;
  /** sha256 of the bundle file itself */
  bundleSha256: string;
}

export const isVersion = (v: unknown): v is string => typeof v === 'string' && VERSION_RE.test(v);
export const bundleFileName = (version: string): string => `ferry-delegate-${version}.tgz`;
const sha256 = (b: Uint8Array): string => crypto.createHash('sha256').update(b).digest('hex');
const invalid = (message: string, details?: unknown): FerryError => new FerryError('VALIDATION_FAILED', message, details);

/** Files at the root of a gzipped tar (or a plain tar), by name without a leading `./`. */
export function rootFiles(buf: Buffer): Promise<Map<string, Buffer>> {
  return new Promise((resolve, reject) => {
    const files = new Map<string, Buffer>();
    let failed: Error | null = null;
    const p = new Parser({
      strict: true,
      onReadEntry: (e: ReadEntry) => {
        const name = e.path.replace(/^(\.\/)+/, '').replace(/\/+$/, '');
        if (e.type !== 'File' || !name || name.includes('/')) {
          e.resume();
          return;
        }
        const parts: Buffer[] = [];
        e.on('data', (d: Buffer) => parts.push(d));
        e.on('end', () => files.set(name, Buffer.concat(parts)));
      },
    });
    p.on('error', (err: Error) => { failed ??= err; });
    p.on('close', () => (failed ? reject(failed) : resolve(files)));
    p.end(buf);
  });
}

/** Reads and checks a bundle; any defect is a VALIDATION_FAILED error naming it. */
export async function readBundle(buf: Buffer): Promise<Bundle> {
  if (buf.length === 0) throw invalid('the body is empty; send the bundle file (ferry-delegate-VERSION.tgz) as application/gzip');
  let files: Map<string, Buffer>;
  try {
    files = await rootFiles(buf);
  } catch (err) {
    throw invalid(`the body is not a gzipped tar: ${(err as Error).message}`);
  }
  const raw = files.get('manifest.json');
  if (!raw) throw invalid(`the bundle has no manifest.json at its root (found: ${[...files.keys()].join(', ') || 'nothing'})`);
  let manifest: unknown;
  try {
    manifest = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw invalid(`manifest.json is not JSON: ${(err as Error).message}`);
  }
  if (!Value.Check(Manifest, manifest)) {
    const e = Value.Errors(Manifest, manifest).First();
    throw invalid(`manifest.json${e?.path ?? ''} ${e?.message ?? 'is invalid'}`, { field: `manifest${e?.path ?? ''}` });
  }
  const m = Value.Clean(Manifest, structuredClone(manifest)) as Manifest;
  if (m.entry.includes('/') || m.entry === 'manifest.json') throw invalid(`manifest.json entry must name a file at the bundle's root, got ${JSON.stringify(m.entry)}`);
  const worker = files.get(m.entry);
  if (!worker) throw invalid(`the worker ${m.entry} named by manifest.json is not at the bundle's root`);
  const workerSha256 = sha256(worker);
  if (workerSha256 !== m.sha256) {
    throw invalid(`sha256 of ${m.entry} is ${workerSha256}, but manifest.json says ${m.sha256}`, { expected: m.sha256, actual: workerSha256 });
  }
  return { manifest: m, workerSha256, bundleSha256: sha256(buf) };
}

type ReleaseRow = ReleasesTable;

export function releaseView(r: ReleaseRow): ReleaseView {
  let extra: { builtAt?: string; bundleSha256?: string } = {};
  try {
    extra = JSON.parse(r.manifest) as typeof extra;
  } catch { /* written by us; never malformed */ }
  return {
    version: r.version,
    sha256: r.sha256,
    protocol: Number(r.protocol),
    publishedAt: new Date(Number(r.published_at)).toISOString(),
    publishedBy: r.published_by,
    builtAt: extra.builtAt ?? null,
    size: Number(r.size),
    bundleSha256: extra.bundleSha256 ?? null,
  };
}

export class Releases {
  constructor(private readonly db: Executor, private readonly dataDir: string) {}

  get dir(): string {
    return path.join(this.dataDir, 'releases');
  }

  async list(): Promise<ReleaseView[]> {
    const rows = await this.db.selectFrom('releases').selectAll().orderBy('published_at', 'desc').orderBy('version').execute();
    return rows.map(releaseView);
  }

  async get(version: string): Promise<ReleaseRow | undefined> {
    return this.db.selectFrom('releases').selectAll().where('version', '=', version).executeTakeFirst();
  }

  /**
   * The bundle of a release as a file of this server's data dir: the cached copy, or
   * written from the database first (a release published through another server).
   * Null when neither has it.
   */
  async bundleFile(row: ReleaseRow): Promise<string | null> {
    const file = path.join(this.dir, bundleFileName(row.version));
    for (const f of [file, row.path]) {
      try {
        if (fs.statSync(f).size === Number(row.size)) return f;
      } catch { /* not here */ }
    }
    const b = await this.db.selectFrom('release_bundles').select('data').where('version', '=', row.version).executeTakeFirst();
    if (!b) return null;
    const data = Buffer.from(b.data);
    if (data.length !== Number(row.size)) throw new Error(`the stored bundle of release ${row.version} has ${data.length} bytes, not ${row.size}`);
    fs.mkdirSync(this.dir, { recursive: true });
    const tmp = `${file}.${process.pid}.${crypto.randomUUID()}.tmp`;
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, file); // the same bytes whoever wins
    return file;
  }

  /**
   * Checks and stores a bundle. The same version again is accepted when its worker is
   * identical (`created: false`), refused with ALREADY_EXISTS otherwise.
   */
  async publish(buf: Buffer, by: string, now: number): Promise<{ created: boolean; release: ReleaseView }> {
    const b = await readBundle(buf);
    const m = b.manifest;
    if (!SUPPORTED_PROTOCOLS.includes(m.protocol)) {
      throw invalid(`the bundle speaks delegate protocol ${m.protocol}; this server speaks ${SUPPORTED_PROTOCOLS.join(', ')}`, { field: 'manifest/protocol' });
    }
    const same = async (): Promise<{ created: false; release: ReleaseView } | null> => {
      const existing = await this.get(m.version);
      if (!existing) return null;
      if (existing.sha256 !== m.sha256) {
        throw new FerryError('ALREADY_EXISTS', `release ${m.version} is already published with another worker (sha256 ${existing.sha256}); publish a new version`);
      }
      return { created: false, release: releaseView(existing) };
    };
    const prior = await same();
    if (prior) return prior;

    fs.mkdirSync(this.dir, { recursive: true });
    const file = path.join(this.dir, bundleFileName(m.version));
    const tmp = `${file}.${process.pid}.${crypto.randomUUID()}.tmp`;
    fs.writeFileSync(tmp, buf);
    try {
      // link, not rename: never replace the file of a release another publish just stored
      fs.linkSync(tmp, file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const raced = await same().catch((e: unknown) => { fs.rmSync(tmp, { force: true }); throw e; });
      if (raced) {
        fs.rmSync(tmp, { force: true });
        return raced;
      }
      fs.renameSync(tmp, file); // a leftover of a publish that failed before its row was written
    }
    fs.rmSync(tmp, { force: true });
    try {
      // the row and the bundle together: any server on this database can serve it
      const insert = async (trx: Executor): Promise<void> => {
        await trx.insertInto('releases').values({
          version: m.version,
          sha256: m.sha256,
          protocol: m.protocol,
          manifest: JSON.stringify({ ...m, bundleSha256: b.bundleSha256 }),
          path: file,
          size: buf.length,
          published_at: now,
          published_by: by,
        }).execute();
        await trx.insertInto('release_bundles').values({ version: m.version, data: buf }).execute();
      };
      if (this.db.isTransaction) await insert(this.db);
      else await (this.db as Kysely<DB>).transaction().execute(insert);
    } catch (err) {
      // Two publishes of one version at once: the loser compares with the winner.
      const raced = await same();
      if (raced) return raced;
      throw err;
    }
    const row = await this.get(m.version);
    return { created: true, release: releaseView(row!) };
  }
}
