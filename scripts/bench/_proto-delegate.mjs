// A protocol client as a process of its own (dispatch throughput without a real
// delegate's task execution): says hello with capacity C, accepts every assignment and
// answers it at once with a Succeeded result. Prints {ready:true}, then {done:n} each second.
import { ProtocolDelegate } from './_ferry.mjs';

const [url, token, name, capacity] = process.argv.slice(2);
const pd = new ProtocolDelegate({ url }, token, { name, capacity: Number(capacity), tags: ['proto'] });
let done = 0;
pd.onAssign = (f) => { pd.complete(f).then(() => { done++; }); };
await pd.connect();
pd.ws.on('close', () => process.exit(2));
process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
setInterval(() => process.stdout.write(`${JSON.stringify({ done })}\n`), 1000);
