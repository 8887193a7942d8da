/**
 * Release routes (CONTRACT §4, §8): publish a delegate bundle (system admins), list
 * releases (any user token), download a bundle (users viewer+, and delegates — but a
 * delegate only the current or previous version of its own ring).
 */
import fs from 'node:fs';
import type { FastifyPluginAsync } from 'fastify';
import { FerryError } from '@ferry/shared';
import { principal, type PluginOpts } from './app.js';
import { requireRole, requireSystem } from './auth.js';
import { ringsOf } from '../rings/index.js';
import { bundleFileName, releaseView, VERSION_PATTERN } from '../rings/releases.js';

const ReleaseOut = {
  type: 'object',
  properties: {
    version: { type: 'string' },
    sha256: { type: 'string', description: 'hex sha256 of the worker file (manifest.json sha256, checked at publish)' },
    protocol: { type: 'integer' },
    publishedAt: { type: 'string', format: 'date-time' },
    publishedBy: { type: 'string' },
    builtAt: { type: 'string', nullable: true },
    size: { type: 'integer' },
    bundleSha256: { type: 'string', nullable: true, description: 'hex sha256 of the bundle file' },
  },
  required: ['version', 'sha256', 'protocol', 'publishedAt'],
} as const;

export const releaseRoutes: FastifyPluginAsync<PluginOpts> = async (app, { ctx }) => {
  const releases = () => ringsOf(ctx).releases;

  app.post('/releases', {
    schema: {
      summary: 'Publish a delegate release bundle (ferry-delegate-VERSION.tgz as application/gzip or application/octet-stream)',
      tags: ['releases'],
      response: { 200: ReleaseOut, 201: ReleaseOut },
    },
  }, async (req, reply) => {
    const p = principal(req);
    requireSystem(p);
    if (!Buffer.isBuffer(req.body)) {
      throw new FerryError('VALIDATION_FAILED', 'send the bundle file as the body with Content-Type: application/gzip (or application/octet-stream)');
    }
    const r = await releases().publish(req.body, p.name, ctx.clock.now());
    req.log.info({ version: r.release.version, sha256: r.release.sha256, by: p.name, created: r.created }, 'release published');
    return reply.code(r.created ? 201 : 200).send(r.release);
  });

  app.get('/releases', {
    schema: { summary: 'List published releases, newest first', tags: ['releases'], response: { 200: { type: 'array', items: ReleaseOut } } },
  }, async (req) => {
    requireRole(principal(req), 'viewer');
    return releases().list();
  });

  app.get<{ Params: { version: string } }>('/releases/:version/bundle', {
    config: { delegateAllowed: true },
    schema: {
      summary: 'Download a release bundle (delegates: only their ring\'s current or previous version)',
      tags: ['releases'],
      params: { type: 'object', properties: { version: { type: 'string', pattern: VERSION_PATTERN } }, required: ['version'] },
    },
  }, async (req, reply) => {
    const p = principal(req);
    const { version } = req.params;
    if (p.kind === 'delegate') {
      const ring = await ctx.store.db.selectFrom('accounts').innerJoin('rings', 'rings.name', 'accounts.ring')
        .select(['rings.name', 'rings.version', 'rings.previous_version']).where('accounts.id', '=', p.accountId).executeTakeFirst();
      if (!ring || (ring.version !== version && ring.previous_version !== version)) {
        throw new FerryError('FORBIDDEN', `release ${version} is not the current or previous version of this delegate's ring${ring ? ` (${ring.name})` : ''}`);
      }
    } else {
      requireRole(p, 'viewer');
    }
    const row = await releases().get(version);
    if (!row) throw new FerryError('NOT_FOUND', `no release ${version}`);
    const file = await releases().bundleFile(row);
    if (!file) {
      req.log.error({ version }, 'release bundle is missing from the database and the data dir');
      throw new FerryError('NOT_FOUND', `the bundle of release ${version} is missing (published before migration 0006 through a server that has not migrated)`);
    }
    const v = releaseView(row);
    return reply
      .type('application/gzip')
      .header('content-length', Number(row.size))
      .header('content-disposition', `attachment; filename="${bundleFileName(version)}"`)
      .header('x-ferry-sha256', v.sha256)
      .send(fs.createReadStream(file));
  });
};
