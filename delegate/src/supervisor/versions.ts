/**
 * Versions on disk, in the delegate's state dir:
 *
 *   $STATE_DIR/versions/<V>/manifest.json, <entry>   installed bundles (the last three kept)
 *   $STATE_DIR/versions/.tmp-*                       downloads in progress (removed at start)
 *   $STATE_DIR/current                               the version to run (one line)
 *   $STATE_DIR/versions.json                         {history: [V…] oldest first, failed: [{version, reason, at}]}
 *
 * The version the supervisor was installed with (dist/worker-main.js, the package's
 * version) needs no directory. Nothing here needs the control plane: a restarted
 * supervisor runs the current version's worker from disk.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const VERSION_RE = /^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$/;
/** How many bundled versions stay on disk (the current one and the two before it). */
export const KEEP_VERSIONS = 3;

export interface Manifest {
  version: string;
  protocol: number;
  entry: string;
  sha256: string;
  builtAt: string;
}

export interface InstalledVersion {
  version: string;
  /** the worker file to run */
  entry: string;
  /** true: the worker this supervisor was installed with (no bundle on disk) */
  builtin: boolean;
  manifest: Manifest | null;
}

export interface FailedVersion {
  version: string;
  reason: string;
  at: string;
}

interface VersionsFile {
  history: string[];
  failed: FailedVersion[];
}

export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Reads and checks a manifest (shape only). Throws with the reason. */
export function readManifest(dir: string): Manifest {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
  } catch (err) {
    throw new Error(`manifest.json missing or not JSON: ${(err as Error).message}`);
  }
  const m = raw as Partial<Manifest> | null;
  if (!m || typeof m !== 'object') throw new Error('manifest.json is not an object');
  if (typeof m.version !== 'string' || !VERSION_RE.test(m.version)) throw new Error('manifest.json: bad version');
  if (typeof m.entry !== 'string' || !m.entry || m.entry.includes('/') || m.entry.includes('\\') || m.entry === 'manifest.json' || m.entry.startsWith('.')) {
    throw new Error('manifest.json: entry must name a file at the bundle root');
  }
  if (typeof m.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(m.sha256)) throw new Error('manifest.json: bad sha256');
  return { version: m.version, protocol: Number(m.protocol), entry: m.entry, sha256: m.sha256, builtAt: String(m.builtAt ?? '') };
}

export class VersionStore {
  readonly dir: string;
  private readonly currentFile: string;
  private readonly metaFile: string;

  constructor(readonly stateDir: string, readonly builtin: { version: string; entry: string }) {
    this.dir = join(stateDir, 'versions');
    this.currentFile = join(stateDir, 'current');
    this.metaFile = join(stateDir, 'versions.json');
  }

  /** Creates the folders and removes leftovers of interrupted downloads. */
  init(): void {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    for (const name of readdirSync(this.dir)) {
      if (name.startsWith('.tmp-')) rmSync(join(this.dir, name), { recursive: true, force: true });
    }
  }

  versionDir(version: string): string {
    if (!VERSION_RE.test(version)) throw new Error(`not a version: ${JSON.stringify(version)}`);
    return join(this.dir, version);
  }

  /** A fresh temp folder inside versions/ (same file system: installing is a rename). */
  tempDir(): string {
    const d = join(this.dir, `.tmp-${process.pid}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`);
    mkdirSync(d, { recursive: true, mode: 0o700 });
    return d;
  }

  /** The version `current` names ('' when unset). */
  currentVersion(): string {
    try {
      return readFileSync(this.currentFile, 'utf8').trim();
    } catch {
      return '';
    }
  }

  setCurrent(version: string): void {
    const tmp = `${this.currentFile}.tmp`;
    writeFileSync(tmp, `${version}\n`);
    renameSync(tmp, this.currentFile);
    const meta = this.readMeta();
    meta.history = [...meta.history.filter((v) => v !== version), version].slice(-16);
    this.writeMeta(meta);
  }

  /**
   * The version to run at start: `current` when its files are there and verify, else the
   * built-in worker. The second value says why the current one was not usable.
   */
  async resolveCurrent(): Promise<{ installed: InstalledVersion; problem?: string }> {
    const v = this.currentVersion();
    if (!v || (v === this.builtin.version && !existsSync(join(this.dir, v)))) return { installed: this.builtinVersion() };
    if (!VERSION_RE.test(v)) return { installed: this.builtinVersion(), problem: `the current file names no version (${JSON.stringify(v.slice(0, 80))})` };
    try {
      return { installed: await this.verified(v) };
    } catch (err) {
      return { installed: this.builtinVersion(), problem: `version ${v} on disk is not usable: ${(err as Error).message}` };
    }
  }

  builtinVersion(): InstalledVersion {
    return { version: this.builtin.version, entry: this.builtin.entry, builtin: true, manifest: null };
  }

  /**
   * An installed bundle whose worker matches its manifest (and `sha256`, when given).
   * Throws with the reason otherwise.
   */
  async verified(version: string, sha256?: string): Promise<InstalledVersion> {
    const dir = this.versionDir(version);
    const m = readManifest(dir);
    if (m.version !== version) throw new Error(`manifest.json says version ${m.version}, expected ${version}`);
    const entry = join(dir, m.entry);
    if (!existsSync(entry)) throw new Error(`the worker ${m.entry} is missing`);
    const actual = await sha256File(entry);
    if (actual !== m.sha256) throw new Error(`sha256 of ${m.entry} is ${actual}, but manifest.json says ${m.sha256}`);
    if (sha256 !== undefined && actual !== sha256) throw new Error(`sha256 of ${m.entry} is ${actual}, but the control plane says ${sha256}`);
    return { version, entry, builtin: false, manifest: m };
  }

  /** Moves an extracted, verified bundle folder into place as versions/<V>. */
  install(version: string, from: string): void {
    const dir = this.versionDir(version);
    rmSync(dir, { recursive: true, force: true });
    renameSync(from, dir);
  }

  /** Keeps the current version, `keep` (e.g. a version being installed), and the most recent others, up to KEEP_VERSIONS. */
  prune(keep: readonly string[] = []): string[] {
    const meta = this.readMeta();
    const current = this.currentVersion();
    const wanted = new Set<string>([current, ...keep].filter(Boolean));
    for (const v of [...meta.history].reverse()) {
      if (wanted.size >= KEEP_VERSIONS) break;
      wanted.add(v);
    }
    const removed: string[] = [];
    let names: string[] = [];
    try {
      names = readdirSync(this.dir);
    } catch {
      return removed;
    }
    for (const name of names) {
      if (name.startsWith('.') || wanted.has(name)) continue;
      rmSync(join(this.dir, name), { recursive: true, force: true });
      removed.push(name);
    }
    meta.history = meta.history.filter((v) => wanted.has(v) || v === this.builtin.version);
    this.writeMeta(meta);
    return removed;
  }

  failed(): FailedVersion[] {
    return this.readMeta().failed;
  }

  failedVersions(): string[] {
    return this.failed().map((f) => f.version);
  }

  addFailed(version: string, reason: string): void {
    const meta = this.readMeta();
    meta.failed = [...meta.failed.filter((f) => f.version !== version), { version, reason: reason.slice(0, 2000), at: new Date().toISOString() }].slice(-16);
    this.writeMeta(meta);
  }

  /** A different target was offered: earlier failures may be retried once they are the target again. */
  clearFailed(): void {
    const meta = this.readMeta();
    if (meta.failed.length === 0) return;
    meta.failed = [];
    this.writeMeta(meta);
  }

  private readMeta(): VersionsFile {
    try {
      const raw = JSON.parse(readFileSync(this.metaFile, 'utf8')) as Partial<VersionsFile>;
      return {
        history: Array.isArray(raw.history) ? raw.history.filter((v): v is string => typeof v === 'string' && VERSION_RE.test(v)) : [],
        failed: Array.isArray(raw.failed) ? raw.failed.filter((f): f is FailedVersion => typeof f?.version === 'string' && VERSION_RE.test(f.version)) : [],
      };
    } catch {
      return { history: [], failed: [] };
    }
  }

  private writeMeta(meta: VersionsFile): void {
    const tmp = `${this.metaFile}.tmp`;
    writeFileSync(tmp, `${JSON.stringify(meta, null, 2)}\n`);
    renameSync(tmp, this.metaFile);
  }
}
