/** noop: sleeps, prints `lines` lines (benchmarks) and succeeds, unless told to fail. */
import type { NoopSpec } from '@ferry/shared';
import { failed, sleep, type TaskContext, type TaskHandler, type TaskOutcome } from './types.js';

export function createNoopHandler(): TaskHandler<NoopSpec> {
  async function run(ctx: TaskContext<NoopSpec>): Promise<TaskOutcome> {
    const { spec, log, signal } = ctx;
    const lines = spec.lines ?? 0;
    for (let i = 1; i <= lines && !signal.aborted; i++) {
      log.line(0, `noop line ${i}`);
      // keep to the spool bound like a real step blocked on its pipe
      if (log.shouldPause) await log.waitForRoom(signal);
      else if (i % 5000 === 0) await new Promise((r) => setImmediate(r));
    }
    if (spec.sleepMs) await sleep(spec.sleepMs, signal);
    if (spec.fail) return failed('StepFailed', 'noop told to fail', { exitCode: 1 });
    return { status: 'Succeeded', exitCode: 0, outputs: {} };
  }
  return {
    kind: 'noop',
    run,
    async selfCheck() {
      /* nothing can fail here */
    },
  };
}
