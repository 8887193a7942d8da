import { describe, expect, test } from 'vitest';
import { ATTEMPT_PAIRS, type AttemptStatus } from '@ferry/shared';
import { ATTEMPT_INITIAL, ATTEMPT_TRANSITIONS, STAGE_TRANSITIONS, TERMINAL_ATTEMPT, TransitionError, transitionAttempt, transitionStage, type AttemptLike, type AttemptPair } from './transitions.js';

describe('the transition tables', () => {
  test('the attempt table covers exactly the pairs of CONTRACT §6', () => {
    const pairs = (Object.entries(ATTEMPT_PAIRS) as Array<[AttemptStatus, readonly string[]]>).flatMap(([s, ops]) => ops.map((o) => `${s}/${o}`));
    expect(Object.keys(ATTEMPT_TRANSITIONS).sort()).toEqual(pairs.sort());
    for (const targets of Object.values(ATTEMPT_TRANSITIONS)) for (const t of targets) expect(pairs).toContain(t);
    // InProgress, QueuedForPipeline is not used
    expect(pairs).not.toContain('InProgress/QueuedForPipeline');
  });

  test('terminal pairs are the Succeeded, PartiallySucceeded and Failed ones plus NotDeployed Rejected/Canceled', () => {
    expect([...TERMINAL_ATTEMPT].sort()).toEqual([
      'Failed/Canceled', 'Failed/GatesFailed', 'Failed/PhaseFailed', 'Failed/Rejected', 'NotDeployed/Canceled',
      'NotDeployed/Rejected', 'PartiallySucceeded/PhasePartiallySucceeded', 'Succeeded/Approved',
    ]);
    expect(ATTEMPT_INITIAL.every((p) => !TERMINAL_ATTEMPT.includes(p))).toBe(true);
  });

  test('transitionAttempt checks the table and records the change', () => {
    const a: AttemptLike = { status: null, operationStatus: null, history: [], finishedAt: null };
    expect(() => transitionAttempt(a, 'Succeeded/Approved', 'x', 1)).toThrow(TransitionError);
    transitionAttempt(a, 'NotDeployed/QueuedForAgent', 'queued', 1);
    transitionAttempt(a, 'InProgress/PhaseInProgress', 'started', 2);
    expect(() => transitionAttempt(a, 'NotDeployed/Queued' as AttemptPair, 'back', 3)).toThrow(/InProgress\/PhaseInProgress → NotDeployed\/Queued is not an allowed transition/);
    transitionAttempt(a, 'InProgress/Cancelling', 'abort', 3);
    expect(() => transitionAttempt(a, 'Succeeded/Approved', 'x', 4)).toThrow(TransitionError);
    transitionAttempt(a, 'Failed/Canceled', 'aborted', 4);
    expect(a.finishedAt).toBe(4);
    expect(a.history.map((h) => `${h.status}/${h.operationStatus}`)).toEqual(['NotDeployed/QueuedForAgent', 'InProgress/PhaseInProgress', 'InProgress/Cancelling', 'Failed/Canceled']);
  });

  test('a stage goes back to NotStarted only from an end (a resume)', () => {
    const s = { id: 'dev', status: 'InProgress' as const, history: [] };
    expect(() => transitionStage({ ...s }, 'NotStarted', 'x', 1)).toThrow(TransitionError);
    for (const [from, to] of Object.entries(STAGE_TRANSITIONS)) if (to.includes('NotStarted')) expect(['Succeeded', 'PartiallySucceeded', 'Failed', 'Canceled', 'Rejected', 'Expired', 'Skipped']).toContain(from);
  });
});
