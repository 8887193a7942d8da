// Baseline: a bare `ws` server that accepts connections and holds them idle.
import { WebSocketServer } from 'ws';
const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, clientTracking: false });
let n = 0;
wss.on('connection', (ws) => { n++; ws.on('error', () => {}); ws.on('close', () => n--); });
wss.on('listening', () => process.stdout.write(`${JSON.stringify({ port: wss.address().port })}\n`));
setInterval(() => process.stdout.write(`${JSON.stringify({ connections: n })}\n`), 1000).unref();
