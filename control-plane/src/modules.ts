/**
 * Optional modules (engine, rings) attach here so that server.ts stays the same while
 * they grow. Each returns start/stop hooks.
 */
import type { AppContext } from './context.js';
import { attachRings } from './rings/index.js';
import { attachEngine } from './engine/index.js';

export interface ModuleHandle {
  start(): Promise<void>;
  stop(): Promise<void>;
}

export async function attachModules(ctx: AppContext): Promise<ModuleHandle> {
  const started: ModuleHandle[] = [];
  started.push(await attachEngine(ctx));
  started.push(await attachRings(ctx));
  return {
    async start() {
      for (const m of started) await m.start();
    },
    async stop() {
      for (const m of [...started].reverse()) await m.stop();
    },
  };
}
