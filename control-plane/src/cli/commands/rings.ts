import fs from 'node:fs';
import type { Command } from 'commander';
import { parseDuration, formatDuration } from '@ferry/shared';
import { clientOf, UsageError } from '../context.js';
import { print, printJson, table, ago } from '../output.js';
import { CliError } from '../client.js';

interface RingDoc {
  name: string;
  order: number;
  version: string | null;
  previousVersion: string | null;
  paused?: boolean;
  accounts: string[];
  delegates: { total: number; onTarget: number; other: number; upgrading: number; failed: number };
  rollout: null | { version: string; state: string; since: string; soak?: number; soakEndsAt?: string; reason?: string | null };
}

interface HistoryDoc {
  at: string;
  from: string | null;
  to: string | null;
  by: string;
  reason: string;
  evidence: unknown;
}

const ring = (name: string) => `/api/v1/rings/${encodeURIComponent(name)}`;

function rolloutText(r: RingDoc['rollout']): string {
  if (!r) return '-';
  return `${r.version} ${r.state} (${ago(r.since)})`;
}

function ringTable(rings: RingDoc[]): string {
  return table(rings.map((r) => ({
    ...r,
    target: r.version ?? '(none)',
    state: r.paused ? 'paused' : 'active',
    total: r.delegates.total,
    onTarget: r.delegates.onTarget,
    other: r.delegates.other,
    upgrading: r.delegates.upgrading,
    failed: r.delegates.failed,
    ro: rolloutText(r.rollout),
  })), [
    ['name', 'RING'], ['target', 'TARGET'], ['previousVersion', 'PREVIOUS'], ['state', 'STATE'], ['accounts', 'ACCOUNTS'],
    ['total', 'DELEGATES'], ['onTarget', 'ON TARGET'], ['other', 'OTHER'], ['upgrading', 'UPGRADING'], ['failed', 'FAILED'], ['ro', 'ROLLOUT'],
  ]);
}

function ringDetail(r: RingDoc): string {
  const d = r.delegates;
  const lines = [
    `ring ${r.name} (order ${r.order})${r.paused ? ' — paused' : ''}`,
    `  target:    ${r.version ?? '(none: delegates keep their version)'}`,
    `  previous:  ${r.previousVersion ?? '-'}`,
    `  accounts:  ${r.accounts.join(', ') || '-'}`,
    `  delegates: ${d.total} connected — ${d.onTarget} on target, ${d.other} on other versions, ${d.upgrading} upgrading, ${d.failed} failed upgrades`,
  ];
  if (r.rollout) {
    lines.push(`  rollout:   ${r.rollout.version} ${r.rollout.state} since ${r.rollout.since} (${ago(r.rollout.since)})`);
    if (r.rollout.soak !== undefined) lines.push(`             soak ${formatDuration(r.rollout.soak)}${r.rollout.soakEndsAt ? `, ends ${r.rollout.soakEndsAt}` : ''}`);
    if (r.rollout.reason) lines.push(`             ${r.rollout.reason}`);
  } else {
    lines.push('  rollout:   -');
  }
  return lines.join('\n');
}

export function registerRingCommands(program: Command): void {
  const rings = program.command('ring').description('delegate rings: target versions, rollouts, rollbacks');

  rings.command('list').description('list rings').option('--json', 'print JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      const r = await clientOf(cmd).get<RingDoc[]>('/api/v1/rings');
      o.json ? printJson(r) : print(ringTable(r));
    });

  rings.command('status [ring]').description('target version, delegates on it, on other versions, upgrading, failed, and the rollout').option('--json', 'print JSON')
    .action(async (name: string | undefined, o: { json?: boolean }, cmd: Command) => {
      const c = clientOf(cmd);
      const r = name ? [await c.get<RingDoc>(ring(name))] : await c.get<RingDoc[]>('/api/v1/rings');
      if (o.json) return printJson(r);
      print(name ? r.map(ringDetail).join('\n') : ringTable(r));
    });

  rings.command('history <ring>').description("a ring's version changes, newest first").option('--json', 'print JSON')
    .action(async (name: string, o: { json?: boolean }, cmd: Command) => {
      const r = await clientOf(cmd).get<HistoryDoc[]>(`${ring(name)}/history`);
      if (o.json) return printJson(r);
      print(table(r.map((h) => ({ ...h, change: `${h.from ?? '-'} → ${h.to ?? '-'}` })), [['at', 'AT'], ['change', 'CHANGE'], ['by', 'BY'], ['reason', 'REASON']]));
    });

  rings.command('set <ring>').description("set a ring's target version").requiredOption('--version <version>', 'a published release').option('--json', 'print JSON')
    .action(async (name: string, o: { version: string; json?: boolean }, cmd: Command) => {
      const r = await clientOf(cmd).put<RingDoc>(ring(name), { version: o.version });
      o.json ? printJson(r) : print(`${name} now targets ${r.version}`);
    });

  rings.command('rollout <version>').description('move a version ring by ring, soaking between rings; halts and rolls back on a regression')
    .option('--soak <duration>', 'soak time per ring, e.g. 10m (server default FERRY_RING_SOAK)')
    .option('--json', 'print JSON')
    .action(async (version: string, o: { soak?: string; json?: boolean }, cmd: Command) => {
      if (o.soak !== undefined && parseDuration(o.soak) === undefined) throw new UsageError(`--soak: not a duration: ${JSON.stringify(o.soak)} (use 500ms, 30s, 5m, 1h, 1d)`);
      const body: Record<string, unknown> = { version };
      if (o.soak !== undefined) body.soak = o.soak;
      const r = await clientOf(cmd).post<RingDoc[]>('/api/v1/rings/rollout', body);
      if (o.json) return printJson(r);
      const first = r.find((x) => x.rollout && x.rollout.version === version && ['soaking', 'paused', 'advancing'].includes(x.rollout.state));
      print(`rollout of ${version} started${first ? ` in ${first.name}` : ''}${first?.rollout?.soak !== undefined ? `, soak ${formatDuration(first.rollout.soak)} per ring` : ''}`);
      print(ringTable(r));
    });

  rings.command('rollback [ring]').description("return a ring (or --all rings) to its previous version").option('--all', 'every ring').option('--json', 'print JSON')
    .action(async (name: string | undefined, o: { all?: boolean; json?: boolean }, cmd: Command) => {
      if (o.all && name) throw new UsageError('give a ring or --all, not both');
      if (!o.all && !name) throw new UsageError('give a ring (ferry ring rollback RING) or --all');
      const c = clientOf(cmd);
      if (o.all) {
        const r = await c.post<RingDoc[]>('/api/v1/rings/rollback-all');
        return o.json ? printJson(r) : print(ringTable(r));
      }
      const r = await c.post<RingDoc>(`${ring(name!)}/rollback`);
      o.json ? printJson(r) : print(`${name} rolled back to ${r.version ?? '(none)'}`);
    });

  for (const action of ['pause', 'resume'] as const) {
    rings.command(`${action} <ring>`).description(action === 'pause' ? 'pause a ring: a rollout does not advance past it' : 'resume a paused ring').option('--json', 'print JSON')
      .action(async (name: string, o: { json?: boolean }, cmd: Command) => {
        const r = await clientOf(cmd).post<RingDoc>(`${ring(name)}/${action}`);
        o.json ? printJson(r) : print(`${name} ${action === 'pause' ? 'paused' : 'resumed'}${r.rollout ? `; rollout of ${r.rollout.version} ${r.rollout.state}` : ''}`);
      });
  }

  const release = program.command('release').description('delegate release bundles');
  release.command('publish <bundle>').description('upload a bundle ferry-delegate-VERSION.tgz').option('--json', 'print JSON')
    .action(async (file: string, o: { json?: boolean }, cmd: Command) => {
      let buf: Buffer;
      try {
        buf = fs.readFileSync(file);
      } catch (err) {
        throw new CliError('NOT_FOUND', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      const r = await clientOf(cmd).request<{ version: string; sha256: string; protocol: number; publishedAt: string }>('POST', '/api/v1/releases', new Uint8Array(buf), 'application/gzip');
      o.json ? printJson(r) : print(`release ${r.version} published (worker sha256 ${r.sha256})`);
    });
  release.command('list').description('list published releases, newest first').option('--json', 'print JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      const r = await clientOf(cmd).get<Array<{ version: string; sha256: string; protocol: number; publishedAt: string }>>('/api/v1/releases');
      if (o.json) return printJson(r.map((x) => ({ version: x.version, sha256: x.sha256, protocol: x.protocol, publishedAt: x.publishedAt })));
      print(table(r, [['version', 'VERSION'], ['protocol', 'PROTOCOL'], ['sha256', 'SHA256'], ['publishedAt', 'PUBLISHED']]));
    });
}
