/**
 * The engine module: pipeline files, the execution state machine and its runtime.
 * `attachEngine` builds the Engine, makes it the scheduler's listener and sets
 * `ctx.engine`; routes reach it through `engineOf(ctx)`.
 */
import type { AppContext } from '../context.js';
import type { ModuleHandle } from '../modules.js';
import { Engine } from './runtime.js';

export { Engine, judgeData, toVerification, type EngineDeps, type ExecutionCommand, type ExecutionSummary, type PipelineSummary, type PipelineView, type SchedulerPort, type LogsPort, type LogQuery, type LogRun, type LogLineOut } from './runtime.js';
export { start, apply, describeRun, pickRollbackArtifact, resolveInputs, mappingKey, type StartInput } from './machine.js';
export { toExecutionDocument, type ExecutionDocument, type StageDocument, type StepDocument, type AttemptDocument } from './document.js';
export { authorize, type EngineAction } from './permissions.js';
export * from './pipeline/index.js';
export type * from './state.js';

/** The engine of a context; a route test without modules gets one without its timer loop. */
export function engineOf(ctx: AppContext): Engine {
  if (!(ctx.engine instanceof Engine)) {
    ctx.engine = new Engine({ store: ctx.store, scheduler: ctx.scheduler, logs: ctx.logs, clock: ctx.clock, logger: ctx.logger });
  }
  return ctx.engine as Engine;
}

export async function attachEngine(ctx: AppContext): Promise<ModuleHandle> {
  const engine = new Engine({
    store: ctx.store, scheduler: ctx.scheduler, logs: ctx.logs, clock: ctx.clock, logger: ctx.logger,
    accountRunningLimit: ctx.config.accountRunningLimit,
  });
  ctx.engine = engine;
  ctx.scheduler.setListener(engine);
  return {
    start: () => engine.start(),
    stop: () => engine.stop(),
  };
}
