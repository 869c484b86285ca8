/**
 * The data port's peer vanishing mid-attach: a client process gets its
 * socket's attach token (Connect over the tcp plane), sends half of the
 * preamble to the data port and is killed -9. The gateway frees everything:
 * the half-open data connection, the host socket dialled for the token (once
 * the token expires), the destination's connection; its descriptor count
 * returns to the baseline exactly, and the socket is gone or closed.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { credentials, status } from '@grpc/grpc-js';
import { SocketGatewayServiceClient, SocketState } from '../../proto/gen/sockgate/v1/sockgate.js';
import { TransportKind } from '../../proto/gen/sockgate/v1/transport.js';
import { encodePreamble, REPLY_BYTES } from '../../proto/wire.js';
import { echoServer, startChildGateway, within } from '../helpers/harness.js';
import { dataConnect, rpc, rpcError } from '../helpers/rpc.js';
import { fdCount, settle } from './helpers.js';

/** Clients that die mid-preamble. */
const VANISHING = 20;
/** Attach token lifetime of the gateway under test: the half-attached host sockets are reaped after it. */
const TOKEN_TTL_MS = 2_000;

test('a client killed -9 with half a preamble sent: the gateway frees everything', async (t) => {
  t.timeout(60_000);
  const echo = await echoServer();
  const g = await startChildGateway('', ['--set', `transports.attach_token_ttl_ms=${TOKEN_TTL_MS}`]);
  const client = new SocketGatewayServiceClient(g.target, credentials.createInsecure());
  t.teardown(async () => {
    client.close();
    g.child.kill('SIGKILL');
    await echo.close();
  });
  const connectTcp = async () => {
    const res = await rpc(client, client.connect, { uri: echo.uri, offers: [{ kind: TransportKind.TRANSPORT_KIND_TCP, version: 1, params: undefined }], timeoutMs: 0, options: [] });
    const a = res.negotiation?.accepted;
    if (a?.params?.$case !== 'tcp') throw new Error('tcp not accepted');
    return { socketId: res.socketId, token: a.attachToken, port: a.params.tcp.port, host: a.params.tcp.host };
  };

  // Warm-up: one complete attach and echo, closed; then the baseline.
  const w = await connectTcp();
  const conn = await dataConnect({ host: w.host, port: w.port }, encodePreamble(w.token));
  await within(conn.waitBytes(REPLY_BYTES, 5_000), 5_000, 'warm-up reply');
  conn.sock.end(Buffer.from('warm'));
  await within(conn.closed, 10_000, 'warm-up close');
  t.is(conn.received().subarray(REPLY_BYTES).toString(), 'warm');
  // The warm-up socket's record and any lazily opened state settle within a token lifetime.
  await new Promise((r) => setTimeout(r, TOKEN_TTL_MS));
  const base = fdCount(g.child.pid!);

  const ids: string[] = [];
  for (let i = 0; i < VANISHING; i++) {
    const a = await connectTcp();
    ids.push(a.socketId);
    const pre = encodePreamble(a.token);
    const half = pre.subarray(0, Math.max(1, pre.length >> 1)).toString('hex');
    // A separate process, so its death is the kernel's doing (no orderly close from our side).
    const code = `const s=require('net').connect(${a.port},${JSON.stringify(a.host)},()=>{s.write(Buffer.from('${half}','hex'),()=>process.stdout.write('sent\\n'))});setInterval(()=>{},1e6)`;
    const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
    await within(once(child.stdout!, 'data'), 10_000, 'half preamble sent');
    child.kill('SIGKILL');
    await once(child, 'exit');
  }
  const during = fdCount(g.child.pid!);
  t.true(during > base, `the half-attached sockets hold descriptors (${during} vs baseline ${base})`);
  const after = await settle(() => fdCount(g.child.pid!), (n) => n === base, TOKEN_TTL_MS + 15_000);
  t.is(after, base, `the gateway's descriptors return to the baseline (${during} right after the kills)`);
  const destConns = await new Promise<number>((r) => echo.server.getConnections((_e, n) => r(n)));
  t.is(destConns, 0, "the destination's connections were closed");
  for (const id of ids) {
    try {
      const info = await rpc(client, client.getInfo, { socketId: id });
      t.is(info.info?.state, SocketState.SOCKET_STATE_CLOSED, `${id} is closed`);
    } catch (err) {
      const e = await rpcError(Promise.reject(err));
      t.is(e.code, status.NOT_FOUND, `${id}: ${e.message}`);
    }
  }
  t.is(g.child.exitCode, null, 'the gateway is still running');
});
