/**
 * Who may do what to an execution. Viewers read. Deployers (and admins) run, resume,
 * abort, approve, reject, intervene and promote — a deployer only within its scopes
 * (`service=…`, `environmentType=production|preproduction`). An approval or custom stage
 * has no environment of its own: it is judged by the deploy stage it leads to (a deployer
 * scoped to preproduction cannot approve the gate before production).
 */
import { FerryError } from '@ferry/shared';
import { requireRole, scopeRefusal, type Principal } from '../http/auth.js';
import type { PipelineDefinition } from './pipeline/types.js';

export type EngineAction = 'apply' | 'run' | 'resume' | 'abort' | 'approve' | 'reject' | 'intervene' | 'promote';

/** The deploy stage whose scope governs stage i: itself, or the next deploy stage. */
function governing(def: PipelineDefinition, i: number): number | null {
  for (let j = i; j < def.stages.length; j++) if (def.stages[j]!.deploy) return j;
  return null;
}

/**
 * Throws FORBIDDEN (with the reason) unless `p` may do `action` on the given stages of
 * `def` (indices; every stage when omitted).
 */
export function authorize(p: Principal, action: EngineAction, def: PipelineDefinition, stages?: number[]): void {
  requireRole(p, 'deployer');
  const indices = stages ?? def.stages.map((_, i) => i);
  const seen = new Set<number>();
  // a run or resume checks each deploy stage it may reach; a decision on one stage checks
  // the deploy stage it governs
  const own = action === 'run' || action === 'resume' || action === 'apply';
  for (const i of indices) {
    const g = own ? (def.stages[i]?.deploy ? i : null) : governing(def, i);
    if (g === null || seen.has(g)) continue;
    seen.add(g);
    const s = def.stages[g]!;
    const why = scopeRefusal(p, { service: s.deploy!.service, environmentType: s.deploy!.environmentType });
    if (why) {
      const which = g === i ? `stage ${s.id}` : `stage ${def.stages[i]!.id} (it leads to ${s.id})`;
      throw new FerryError('FORBIDDEN', `cannot ${action} ${which}: ${why}`, { stage: def.stages[i]!.id, reason: why });
    }
  }
}

export function requireReader(p: Principal): void {
  requireRole(p, 'viewer');
}
