/**
 * Messages between the supervisor and its worker over the Node IPC channel. Both sides
 * ignore message types they do not know, so either may be newer than the other.
 */
import type { UpgradeStatus } from '@ferry/shared';

export type WorkerToSupervisor =
  /** a session was welcomed */
  | { type: 'connected'; sessionId: string }
  /** self-checks done and the first welcome received: the worker is healthy */
  | { type: 'ready'; capabilities: string[]; failed: Array<{ capability: string; error: string }> }
  /** the server asks for this version; the supervisor downloads, checks and switches */
  | { type: 'upgrade'; version: string; sha256: string; url: string };

export type SupervisorToWorker =
  /** forwarded to the server as an `upgrade.status` frame */
  | { type: 'upgrade.status'; version: string; state: UpgradeStatus['state']; error?: string }
  /** stop taking tasks, finish the running ones, flush, exit 0 */
  | { type: 'drain' }
  /** probation passed: take tasks, and reconnect at once so the server sees a normal session */
  | { type: 'probation.end' };

export function isSupervisorMessage(m: unknown): m is SupervisorToWorker {
  const t = (m as { type?: unknown } | null)?.type;
  return t === 'upgrade.status' || t === 'drain' || t === 'probation.end';
}

export function isWorkerMessage(m: unknown): m is WorkerToSupervisor {
  const t = (m as { type?: unknown } | null)?.type;
  return t === 'connected' || t === 'ready' || t === 'upgrade';
}
