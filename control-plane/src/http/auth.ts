/**
 * Request authentication and permission checks. Every /api/v1 route except the
 * delegate upgrade needs `Authorization: Bearer TOKEN` of a user token; release bundle
 * downloads also take delegate tokens.
 */
import { FerryError } from '@ferry/shared';
import type { Executor } from '../store/db.js';
import { findToken, type Role, type Scopes, type TokenInfo, DEFAULT_ACCOUNT } from '../store/accounts.js';

export interface Principal {
  tokenId: string;
  kind: 'delegate' | 'user';
  /** the token's name: the identity recorded for approvals and interventions */
  name: string;
  accountId: string;
  account: string;
  role: Role | null;
  scopes: Scopes;
  /** an admin of the `default` account: manages accounts, rings, releases, every account */
  system: boolean;
}

export function principalOf(t: TokenInfo): Principal {
  return {
    tokenId: t.id,
    kind: t.kind,
    name: t.name,
    accountId: t.accountId,
    account: t.account,
    role: t.role,
    scopes: t.scopes,
    system: t.kind === 'user' && t.role === 'admin' && t.account === DEFAULT_ACCOUNT,
  };
}

export function bearer(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m?.[1];
}

/** Short-lived cache of token lookups; revocation invalidates it at once. */
export class TokenCache {
  private readonly entries = new Map<string, { p: Principal | null; at: number }>();
  constructor(private readonly db: Executor, private readonly ttlMs = 2000) {}

  async lookup(secret: string, now: number): Promise<Principal | null> {
    const hit = this.entries.get(secret);
    if (hit && now - hit.at < this.ttlMs) return hit.p;
    const t = await findToken(this.db, secret);
    const p = t && !t.revoked ? principalOf(t) : null;
    if (this.entries.size > 10_000) this.entries.clear();
    this.entries.set(secret, { p, at: now });
    return p;
  }

  invalidate(): void {
    this.entries.clear();
  }
}

const RANK: Record<Role, number> = { viewer: 0, deployer: 1, admin: 2 };

/** Throws FORBIDDEN unless the principal is a user token with at least `role`. */
export function requireRole(p: Principal, role: Role): void {
  if (p.kind !== 'user') throw new FerryError('FORBIDDEN', 'a delegate token can only connect a delegate');
  if (RANK[p.role ?? 'viewer'] < RANK[role]) throw new FerryError('FORBIDDEN', `this needs the ${role} role; the token has ${p.role}`);
}

export function requireSystem(p: Principal): void {
  requireRole(p, 'admin');
  if (!p.system) throw new FerryError('FORBIDDEN', `only an admin of the ${DEFAULT_ACCOUNT} account may do this`);
}

/**
 * A deployer's scopes: may it act on this service / environment type? Admins are not scoped.
 * Returns the reason when it may not.
 */
export function scopeRefusal(p: Principal, target: { service?: string | null; environmentType?: string | null }): string | null {
  if (p.role === 'admin') return null;
  if (p.scopes.service && target.service && p.scopes.service !== target.service) {
    return `the token is scoped to service ${p.scopes.service}, not ${target.service}`;
  }
  if (p.scopes.environmentType && target.environmentType && p.scopes.environmentType !== target.environmentType) {
    return `the token is scoped to ${p.scopes.environmentType} environments, and this is a ${target.environmentType} environment`;
  }
  return null;
}
