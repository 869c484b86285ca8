/**
 * The gateway's Connect rate on its own: an in-process gateway and an
 * in-process gRPC client issuing Connect (tcp offered, so a host connection
 * to a loopback listener is opened each time) followed by CloseSocket, from
 * CONCURRENCY loops, for RUN_MS. No data plane: this is the control path's
 * ceiling. `node dist/test/bench/connect-rpc.js [--ms N] [--concurrency N]`
 * prints one JSON line (Connect RPCs per second, p50/p99 Connect latency).
 */
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { credentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import { SocketGatewayServiceClient, type ConnectResponse } from '../../proto/gen/sockgate/v1/sockgate.js';
import { TransportKind } from '../../proto/gen/sockgate/v1/transport.js';
import { echoServer, startGateway } from '../helpers/harness.js';
import { percentile } from './lib.js';

/** Default timed run and loops (the 16 concurrent clients). */
const RUN_MS = 5_000;
const CONCURRENCY = 16;

const { values } = parseArgs({ options: { ms: { type: 'string' }, concurrency: { type: 'string' } } });
const ms = Number(values.ms ?? RUN_MS);
const conc = Number(values.concurrency ?? CONCURRENCY);

const echo = await echoServer();
const gw = await startGateway({ transports: { enabled: ['tcp', 'grpc'] }, telemetry: { log_level: 'warn', traces: 'none' } });
const client = new SocketGatewayServiceClient(gw.target, credentials.createInsecure());
const md = new Metadata();
const call = <Req, Res>(fn: (r: Req, m: Metadata, cb: (e: ServiceError | null, r: Res) => void) => unknown, req: Req) =>
  new Promise<Res>((resolve, reject) => fn.call(client, req, md, (e, r) => (e ? reject(e) : resolve(r))));
const req = { uri: echo.uri, offers: [{ kind: TransportKind.TRANSPORT_KIND_TCP, version: 1, params: undefined }], timeoutMs: 0, options: [] };
const lat: number[] = [];
let errors = 0;
const loop = async (until: number, record: boolean) => {
  while (performance.now() < until) {
    const t0 = performance.now();
    try {
      const res = await call<typeof req, ConnectResponse>(client.connect, req);
      if (record) lat.push(performance.now() - t0);
      await call(client.closeSocket, { socketId: res.socketId });
    } catch {
      errors++;
    }
  }
};
await Promise.all(Array.from({ length: conc }, () => loop(performance.now() + 500, false)));
const t0 = performance.now();
await Promise.all(Array.from({ length: conc }, () => loop(t0 + ms, true)));
const wall = performance.now() - t0;
const sorted = Float64Array.from(lat).sort();
process.stdout.write(
  `${JSON.stringify({ connect_rpc_per_s: Math.round((lat.length * 1000) / wall), concurrency: conc, p50_us: Math.round(percentile(sorted, 50) * 1000), p99_us: Math.round(percentile(sorted, 99) * 1000), errors, note: 'each Connect is followed by a CloseSocket on the same loop' })}\n`,
);
client.close();
await gw.stop();
await echo.close();
process.exit(0);
