/** @ferry/delegate: the delegate worker and its supervisor. */
export { loadConfig, ConfigError, redactedConfig, USAGE, type DelegateConfig } from './config.js';
export { loadDelegateId } from './identity.js';
export { delegateVersion } from './version.js';
export { Worker, runWorker, EXIT_CONFIG, type WorkerOptions } from './worker.js';
export { Spool, TaskSpool, taskKey, type SpoolEntry } from './spool/spool.js';
export { Backoff, type BackoffOptions } from './connection/backoff.js';
export { Connection, connectUrl, isFatalEnd, describeEnd, type SessionEnd } from './connection/client.js';
export { TaskRunner, type AssignDecision } from './tasks/runner.js';
export { LogSink, chunkLimits, type ChunkLimits } from './tasks/log-sink.js';
export {
  createHandlers, runSelfChecks, createShellHandler, createHttpHandler, createNoopHandler, createVerifyHandler,
  type HandlerMap, type SelfCheckReport, type TaskHandler, type TaskContext, type TaskOutcome,
} from './tasks/index.js';
export type { WorkerToSupervisor, SupervisorToWorker } from './ipc.js';
export { Supervisor, defaultWorkerEntry } from './supervisor/main.js';
export { WorkerHandle, type WorkerExit, type WorkerHandleOptions } from './supervisor/worker-handle.js';
