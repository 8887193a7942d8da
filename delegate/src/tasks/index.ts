import type { TaskKind } from '@ferry/shared';
import type { TaskHandler } from './types.js';
import { createShellHandler } from './shell.js';
import { createHttpHandler } from './http.js';
import { createNoopHandler } from './noop.js';
import { createVerifyHandler } from './verify.js';

export type HandlerMap = { readonly [K in TaskKind]?: TaskHandler };

export function createHandlers(opts: { env?: NodeJS.ProcessEnv } = {}): HandlerMap {
  return {
    shell: createShellHandler(opts) as unknown as TaskHandler,
    http: createHttpHandler() as unknown as TaskHandler,
    noop: createNoopHandler() as unknown as TaskHandler,
    verify: createVerifyHandler() as unknown as TaskHandler,
  };
}

export interface SelfCheckReport {
  capabilities: TaskKind[];
  failed: Array<{ capability: TaskKind; error: string }>;
}

/**
 * Runs every handler's self-check (in parallel, each bounded); a check that fails is tried
 * again after each of `retryDelaysMs` (a start on a starved machine can time out); what
 * still fails is not announced.
 */
export async function runSelfChecks(handlers: HandlerMap, timeoutMs = 15_000, retryDelaysMs: readonly number[] = [1000, 3000]): Promise<SelfCheckReport> {
  let results = await selfCheckRound(Object.entries(handlers) as Array<[TaskKind, TaskHandler]>, timeoutMs);
  for (const delay of retryDelaysMs) {
    const again = results.filter((r) => r.error !== undefined);
    if (again.length === 0) break;
    await new Promise((r) => setTimeout(r, delay));
    const next = await selfCheckRound(again.map((r) => [r.kind, handlers[r.kind]!] as [TaskKind, TaskHandler]), timeoutMs);
    results = results.map((r) => next.find((x) => x.kind === r.kind) ?? r);
  }
  return report(results);
}

type CheckResult = { kind: TaskKind; error: string | undefined };

function report(results: CheckResult[]): SelfCheckReport {
  return {
    capabilities: results.filter((r) => r.error === undefined).map((r) => r.kind),
    failed: results.filter((r) => r.error !== undefined).map((r) => ({ capability: r.kind, error: r.error! })),
  };
}

async function selfCheckRound(entries: Array<[TaskKind, TaskHandler]>, timeoutMs: number): Promise<CheckResult[]> {
  return Promise.all(entries.map(async ([kind, h]): Promise<CheckResult> => {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        h.selfCheck(),
        new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`self-check timed out after ${timeoutMs}ms`)), timeoutMs); }),
      ]);
      return { kind, error: undefined };
    } catch (err) {
      return { kind, error: (err as Error).message || String(err) };
    } finally {
      clearTimeout(timer);
    }
  }));
}

export { createShellHandler, createHttpHandler, createNoopHandler, createVerifyHandler };
export type { TaskHandler, TaskContext, TaskOutcome, AbortCause } from './types.js';
