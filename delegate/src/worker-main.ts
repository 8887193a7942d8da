/** Entry of the worker process (started by the supervisor, or directly). */
import { runWorker } from './worker.js';

runWorker().catch((err: unknown) => {
  process.stderr.write(`error: INTERNAL: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exit(1);
});
