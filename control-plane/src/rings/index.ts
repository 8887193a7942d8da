/**
 * The rings module: releases, ring targets, upgrade delivery, rollouts and their health
 * check. `attachRings` sets `ctx.rings` (a RingService) and subscribes to the gateway.
 */
import type { UpgradeStatus } from '@ferry/shared';
import type { AppContext } from '../context.js';
import type { ModuleHandle } from '../modules.js';
import type { Session } from '../gateway/gateway.js';
import { RingService } from './service.js';

export { RingService, SYSTEM_ACTOR, type SessionLike, type RingDeps } from './service.js';
export { Releases, readBundle, bundleFileName, type ReleaseView, type Manifest } from './releases.js';
export type { RingView, HistoryEntry, Rollout, RolloutState, DelegateCounts } from './types.js';

/** The rings service of a context (http/ routes use this). */
export function ringsOf(ctx: AppContext): RingService {
  if (!(ctx.rings instanceof RingService)) {
    // Not attached (e.g. a route test without modules): a service without the event loop.
    ctx.rings = new RingService({ store: ctx.store, clock: ctx.clock, logger: ctx.logger, config: ctx.config, sessions: () => ctx.gateway.sessions() });
  }
  return ctx.rings as RingService;
}

export async function attachRings(ctx: AppContext): Promise<ModuleHandle> {
  const rings = new RingService({ store: ctx.store, clock: ctx.clock, logger: ctx.logger, config: ctx.config, sessions: () => ctx.gateway.sessions() });
  ctx.rings = rings;
  const log = ctx.logger.child({ mod: 'rings' });
  const guard = (what: string) => (err: unknown) => log.error({ err }, `${what} failed`);
  const onOpened = (s: Session) => void rings.onSessionOpened(s).catch(guard('upgrade offer'));
  const onClosed = (s: Session) => rings.onSessionClosed(s);
  const onRing = (accountId: string) => void rings.onAccountRing(accountId).catch(guard('upgrade offer'));
  const onStatus = (s: Session, f: UpgradeStatus) => rings.onUpgradeStatus(s, f);
  ctx.gateway.on('session.opened', onOpened);
  ctx.gateway.on('session.closed', onClosed);
  ctx.gateway.on('account.ring', onRing);
  ctx.gateway.on('upgrade.status', onStatus);
  return {
    async start() {
      rings.start();
    },
    async stop() {
      ctx.gateway.off('session.opened', onOpened);
      ctx.gateway.off('session.closed', onClosed);
      ctx.gateway.off('account.ring', onRing);
      ctx.gateway.off('upgrade.status', onStatus);
      await rings.stop();
    },
  };
}
