/**
 * Child of exit-teardown.test.ts: leaves native wraps with threads open and
 * lets the process end, the way an SDK process ends with its process-wide relay
 * pump still alive. argv[2]: 'natural' (the event loop empties) or 'exit'
 * (process.exit). Prints what it left open on stdout.
 */
import { createServer, connect, type Socket } from 'node:net';
import { once } from 'node:events';
import { dupFd, Pump, vsock } from '../../native/index.js';

const how = process.argv[2] ?? 'natural';
const left: string[] = [];

// An idle unref'd pump (the relay pump between uses).
const idle = new Pump(() => {}, { unrefWhenIdle: true });
void idle;
left.push('idle pump open');

// A pump with a live splice link between two loopback connections.
const server = createServer();
server.listen(0, '127.0.0.1');
await once(server, 'listening');
const port = (server.address() as { port: number }).port;
const accepted: Socket[] = [];
server.on('connection', (s) => {
  s.on('error', () => {});
  accepted.push(s);
});
const a = connect(port, '127.0.0.1');
const b = connect(port, '127.0.0.1');
await Promise.all([once(a, 'connect'), once(b, 'connect')]);
for (const s of [a, b]) s.on('error', () => {});
const busy = new Pump(() => {}, { unrefWhenIdle: true });
const fdOf = (s: Socket) => (s as unknown as { _handle: { fd: number } })._handle.fd;
// The link owns what it is given: dups, as the gateway hands it (Node keeps its own fds).
busy.splice(dupFd(fdOf(a)), dupFd(fdOf(b)));
left.push('busy pump with a splice link');

// A vsock listener, where this kernel lets us bind one.
if (vsock.available) {
  try {
    const l = new vsock.Listener(vsock.CID_ANY, vsock.PORT_ANY, 4, () => {});
    l.unref();
    left.push(`vsock listener port=${l.port}`);
  } catch (err) {
    left.push(`vsock listener not bound: ${(err as Error).message}`);
  }
}

console.log(left.join('; '));
if (how === 'exit') process.exit(0);
// Let the loop empty: nothing here keeps it alive but the pumps, which are unref'd once their links end.
server.close();
for (const s of accepted) s.destroy();
a.unref();
b.unref();
