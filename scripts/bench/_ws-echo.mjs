// Baseline: a bare `ws` echo server (binary frames back as they came), for round trips.
import { WebSocketServer } from 'ws';
const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, clientTracking: false });
wss.on('connection', (ws) => { ws.on('error', () => {}); ws.on('message', (d, isBinary) => ws.send(d, { binary: isBinary })); });
wss.on('listening', () => process.stdout.write(`${JSON.stringify({ port: wss.address().port })}\n`));
