import type { Command } from 'commander';
import { Client, resolveClientOptions } from './client.js';

/** The client for a command, from the global --url/--token (or env). */
export function clientOf(cmd: Command): Client {
  const o = cmd.optsWithGlobals() as { url?: string; token?: string };
  return new Client(resolveClientOptions(o));
}

export function collect(value: string, prev: string[] = []): string[] {
  return [...prev, value];
}

/** KEY=VALUE pairs into an object; a bad pair is a usage error. */
export function pairs(list: string[] | undefined, flag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of list ?? []) {
    const i = item.indexOf('=');
    if (i <= 0) throw new UsageError(`${flag} expects KEY=VALUE, got ${JSON.stringify(item)}`);
    out[item.slice(0, i)] = item.slice(i + 1);
  }
  return out;
}

export class UsageError extends Error {}
