/** Prometheus metrics of the control plane (GET /metrics). One registry per server. */
import client from 'prom-client';

export function createMetrics() {
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry });
  const m = {
    registry,
    delegatesConnected: new client.Gauge({ name: 'ferry_delegates_connected', help: 'Delegate sessions open on this server', registers: [registry] }),
    sessionsOpened: new client.Counter({ name: 'ferry_sessions_opened_total', help: 'Delegate sessions opened', registers: [registry] }),
    sessionsClosed: new client.Counter({ name: 'ferry_sessions_closed_total', help: 'Delegate sessions closed, by reason', labelNames: ['reason'], registers: [registry] }),
    upgradesRefused: new client.Counter({ name: 'ferry_upgrades_refused_total', help: 'WebSocket upgrades refused, by code', labelNames: ['code'], registers: [registry] }),
    framesIn: new client.Counter({ name: 'ferry_frames_in_total', help: 'Frames received from delegates, by type', labelNames: ['type'], registers: [registry] }),
    framesOut: new client.Counter({ name: 'ferry_frames_out_total', help: 'Frames sent to delegates, by type', labelNames: ['type'], registers: [registry] }),
    invalidFrames: new client.Counter({ name: 'ferry_invalid_frames_total', help: 'Frames refused, by close code', labelNames: ['code'], registers: [registry] }),
    tasksQueued: new client.Counter({ name: 'ferry_tasks_queued_total', help: 'Tasks queued', labelNames: ['kind'], registers: [registry] }),
    tasksFinished: new client.Counter({ name: 'ferry_tasks_finished_total', help: 'Tasks finished, by kind and status', labelNames: ['kind', 'status'], registers: [registry] }),
    dispatchLatency: new client.Histogram({ name: 'ferry_dispatch_latency_seconds', help: 'Queued to task.assign sent', buckets: [0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30], registers: [registry] }),
    logLinesStored: new client.Counter({ name: 'ferry_log_lines_stored_total', help: 'Log lines stored durably', registers: [registry] }),
    executions: new client.Counter({ name: 'ferry_executions_finished_total', help: 'Executions finished, by status', labelNames: ['status'], registers: [registry] }),
  };
  return m;
}
export type Metrics = ReturnType<typeof createMetrics>;
