/** Public surface of @ferry/control-plane for tests and embedding. */
export { openStore, nextSequence, type Store, type DB, type Dialect } from './store/db.js';
export { bootstrap } from './store/bootstrap.js';
export { createAccount, createToken, findToken, revokeToken, listTokens, hashToken } from './store/accounts.js';
export { claimTasks } from './scheduler/claim.js';
export { startServer, type RunningServer } from './server.js';
export { loadServerConfig, type ServerConfig } from './config.js';
