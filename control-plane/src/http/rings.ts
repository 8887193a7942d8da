import type { FastifyPluginAsync } from 'fastify';
import type { PluginOpts } from './app.js';

/** Placeholder: routes of this resource are registered here by its module's owner. */
export const ringRoutes: FastifyPluginAsync<PluginOpts> = async (_app, _opts) => {};
