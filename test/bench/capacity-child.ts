/**
 * The far ends of a capacity run, each its own process (so the descriptors
 * counted are the gateway's alone), driven over the IPC channel:
 *   `dest`:   a loopback TCP server that accepts and holds (echoing what it gets);
 *             sends {port}, answers {cmd:'count'} with {connections}.
 *   `client`: opens sockets through a gateway with the SDK, several SDK
 *             connections (each its own shm session), proves each one with a
 *             16-byte echo, holds them until {cmd:'close'}.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type Socket } from 'node:net';
import { Gateway } from '../../clients/sdk/gateway.js';
import type { GatewaySocket, TransportName } from '../../clients/sdk/socket.js';

/** Sockets per SDK connection: under the gateway's 1024 shm slots per session. */
const SOCKETS_PER_SESSION = 1000;
/** Connects in flight at once per client process. */
const CONNECT_CONCURRENCY = 64;
/** Bytes echoed through each socket to prove it carries data. */
const PROBE_BYTES = 16;

type Msg = { cmd: 'open'; target: string; uri: string; count: number; transport: TransportName } | { cmd: 'close' } | { cmd: 'count' };

const send = (m: unknown) => process.send!(m);

function dest(): void {
  const conns = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (c) => {
    conns.add(c);
    c.on('error', () => {});
    c.on('close', () => conns.delete(c));
    c.pipe(c);
  });
  server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, () => send({ port: (server.address() as { port: number }).port }));
  process.on('message', (m: Msg) => {
    if (m.cmd === 'count') send({ connections: conns.size });
  });
}

/** One socket: connect, echo a probe, keep it open. */
async function openOne(gw: Gateway, uri: string, transport: TransportName): Promise<GatewaySocket> {
  const s = await gw.connect(uri, { transports: [transport] });
  const probe = randomBytes(PROBE_BYTES);
  const back = await new Promise<Buffer>((resolve, reject) => {
    let got = Buffer.alloc(0);
    const onData = (c: Buffer) => {
      got = Buffer.concat([got, c]);
      if (got.length >= PROBE_BYTES) {
        s.off('data', onData);
        s.off('error', reject);
        s.pause();
        resolve(got);
      }
    };
    s.on('data', onData);
    s.once('error', reject);
    s.write(probe);
  });
  if (!back.equals(probe)) throw new Error(`socket ${s.socketId}: the echo differs from the probe`);
  s.on('error', () => {});
  return s;
}

function client(): void {
  const gws: Gateway[] = [];
  const socks: GatewaySocket[] = [];
  process.on('message', (m: Msg) => {
    if (m.cmd === 'open') {
      void (async () => {
        const errors = new Map<string, number>();
        let next = 0;
        const started = Date.now();
        const sessions = Math.ceil(m.count / SOCKETS_PER_SESSION);
        for (let i = 0; i < sessions; i++) gws.push(await Gateway.connect(m.target, { transports: [m.transport] }));
        const worker = async () => {
          for (let i = next++; i < m.count; i = next++) {
            try {
              socks.push(await openOne(gws[Math.floor(i / SOCKETS_PER_SESSION)]!, m.uri, m.transport));
            } catch (err) {
              const k = (err as { code?: string }).code ?? (err as Error).message.slice(0, 80);
              errors.set(k, (errors.get(k) ?? 0) + 1);
            }
          }
        };
        await Promise.all(Array.from({ length: CONNECT_CONCURRENCY }, worker));
        send({ opened: socks.length, errors: Object.fromEntries(errors), ms: Date.now() - started });
      })();
    } else if (m.cmd === 'close') {
      void (async () => {
        await Promise.all(
          socks.splice(0).map(
            (s) =>
              new Promise<void>((resolve) => {
                if (s.closed) return resolve();
                s.once('close', () => resolve());
                s.end();
                s.resume();
              }),
          ),
        );
        for (const g of gws.splice(0)) g.close();
        send({ closed: true });
      })();
    }
  });
  send({ ready: true });
}

if (process.argv[2] === 'dest') dest();
else client();
