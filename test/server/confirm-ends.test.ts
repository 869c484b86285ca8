/**
 * ConfirmEnds (server/confirm-ends.ts): the tcp plane's end-of-stream
 * confirmations for many sockets in one call. States in request order; a
 * socket that ended is HALF_CLOSED or CLOSED; an unknown id and another
 * identity's socket are UNSPECIFIED (never confirmed, existence not revealed);
 * an OPEN socket is waited for and confirmed when it ends; a batch over
 * limits.max_confirm_batch is refused.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { credentials, status } from '@grpc/grpc-js';
import { SocketGatewayServiceClient, SocketState } from '../../proto/gen/sockgate/v1/sockgate.js';
import { TransportKind } from '../../proto/gen/sockgate/v1/transport.js';
import { encodePreamble, REPLY_BYTES } from '../../proto/wire.js';
import { echoServer, startGateway, within } from '../helpers/harness.js';
import { bearer, dataConnect, rpc, rpcError } from '../helpers/rpc.js';

const TOKEN = { a: 'confirm-tenant-a-0123456789abcdef', b: 'confirm-tenant-b-0123456789abcdef' };
const TCP_OFFER = { kind: TransportKind.TRANSPORT_KIND_TCP, version: 1, params: undefined };

test('ConfirmEnds: ended sockets confirmed in order, unknown and foreign ids never, OPEN ones waited for, batch bounded', async (t) => {
  const echo = await echoServer();
  const gw = await startGateway({
    transports: { enabled: ['tcp', 'grpc'] },
    identities: [
      { name: 'tenant-a', tokens: [TOKEN.a] },
      { name: 'tenant-b', tokens: [TOKEN.b] },
    ],
    limits: { max_confirm_batch: 4 },
  });
  const client = new SocketGatewayServiceClient(gw.target, credentials.createInsecure());
  t.teardown(async () => {
    client.close();
    await echo.close();
    await gw.stop();
  });
  const A = bearer(TOKEN.a);
  const B = bearer(TOKEN.b);
  const open = async (md: typeof A) => {
    const res = await rpc(client, client.connect, { uri: echo.uri, offers: [TCP_OFFER], timeoutMs: 0, options: [] }, md);
    const acc = res.negotiation!.accepted!;
    if (acc.params?.$case !== 'tcp') throw new Error('tcp not accepted');
    const conn = await dataConnect({ host: acc.params.tcp.host, port: acc.params.tcp.port }, encodePreamble(acc.attachToken));
    await within(conn.waitBytes(REPLY_BYTES, 5_000), 5_000, 'attach reply');
    return { id: res.socketId, conn };
  };
  // One socket whose echo ran to its end (payload checked), one still open, one of tenant b.
  const ended = await open(A);
  const payload = randomBytes(50_000);
  ended.conn.sock.end(payload);
  await within(ended.conn.closed, 5_000, 'echo to its end');
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  t.is(sha(ended.conn.received().subarray(REPLY_BYTES)), sha(payload));
  const still = await open(A);
  const foreign = await open(B);

  const res = await rpc(client, client.confirmEnds, { socketIds: [ended.id, 'no-such-socket', foreign.id] }, A);
  t.is(res.states.length, 3);
  t.true(res.states[0] === SocketState.SOCKET_STATE_HALF_CLOSED || res.states[0] === SocketState.SOCKET_STATE_CLOSED, `ended socket: state ${res.states[0]}`);
  t.is(res.states[1], SocketState.SOCKET_STATE_UNSPECIFIED, 'unknown id: not confirmed');
  t.is(res.states[2], SocketState.SOCKET_STATE_UNSPECIFIED, "another identity's socket: not confirmed, not revealed");

  // An OPEN socket is waited for: the answer comes once its stream ends.
  const waiting = rpc(client, client.confirmEnds, { socketIds: [still.id] }, A);
  await new Promise((r) => setTimeout(r, 100));
  still.conn.sock.end();
  const later = await within(waiting, 5_000, 'ConfirmEnds of a socket that ends meanwhile');
  t.true(later.states[0] === SocketState.SOCKET_STATE_HALF_CLOSED || later.states[0] === SocketState.SOCKET_STATE_CLOSED, `state after its end: ${later.states[0]}`);

  const over = await rpcError(rpc(client, client.confirmEnds, { socketIds: ['a', 'b', 'c', 'd', 'e'] }, A));
  t.is(over.code, status.RESOURCE_EXHAUSTED);
  t.regex(over.message, /max_confirm_batch/);
  foreign.conn.sock.destroy();
});
