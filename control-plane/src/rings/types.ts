/** Shapes of rings, rollouts and their history (CONTRACT §3 for the JSON documents). */

export const ROLLOUT_STATES = ['soaking', 'advancing', 'halted', 'completed', 'rolledBack', 'paused'] as const;
export type RolloutState = (typeof ROLLOUT_STATES)[number];

/**
 * A rollout as it stands in one ring, kept in `rings.rollout` (JSON) so that it survives
 * a restart. The ring that holds a rollout in `soaking`, `advancing` or `paused` is where
 * it is now; rings it passed read `completed`, rings it has not reached have none.
 *
 *   soaking    the ring runs the version; its soak time runs; health is checked
 *   advancing  soak over, waiting for the ring's delegates to finish upgrading (or for
 *              the next ring to be resumed) before the next ring gets the version
 *   paused     `ferry ring pause`: no advance; the health check still runs
 *   completed  the ring passed; the next ring got the version
 *   halted     a regression (or failed upgrades) stopped the rollout
 *   rolledBack the ring went back to its previous version (after a halt, or by hand)
 */
export interface Rollout {
  id: string;
  version: string;
  state: RolloutState;
  /** when the current state began */
  since: number;
  /** when this ring got the version: the start of the health window */
  startedAt: number;
  /** when the soak clock started (`resume` restarts it) */
  soakStartedAt: number;
  soakMs: number;
  /** the ring's version before the rollout reached it (null: none) */
  previous: string | null;
  by: string;
  reason: string | null;
}

export const ACTIVE_STATES: ReadonlySet<RolloutState> = new Set(['soaking', 'advancing', 'paused']);

export interface DelegateCounts {
  total: number;
  onTarget: number;
  other: number;
  upgrading: number;
  failed: number;
}

export interface RolloutView {
  version: string;
  state: RolloutState;
  since: string;
  startedAt: string;
  soak: number;
  soakEndsAt: string;
  by: string;
  reason: string | null;
}

export interface RingView {
  name: string;
  order: number;
  version: string | null;
  previousVersion: string | null;
  paused: boolean;
  accounts: string[];
  delegates: DelegateCounts;
  rollout: RolloutView | null;
}

export interface HistoryEntry {
  at: string;
  from: string | null;
  to: string | null;
  by: string;
  reason: string;
  evidence: unknown;
}
