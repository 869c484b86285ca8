/**
 * Parallel open on the tcp plane (TcpOffer.open_nonce; server/attach.ts park,
 * server/transport-tcp.ts, clients/sdk/tcp-parallel.ts): a data connection
 * that presents a nonce before its Connect waits for it, and is linked by the
 * time the Connect answers; a nonce never issued is refused at the preamble
 * timeout; a spent nonce is never issued again; and the SDK opens in one round
 * trip with bytes intact, also when the server speaks first.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type Socket } from 'node:net';
import { credentials } from '@grpc/grpc-js';
import { SocketGatewayServiceClient, SocketState } from '../../proto/gen/sockgate/v1/sockgate.js';
import { TransportKind } from '../../proto/gen/sockgate/v1/transport.js';
import { AttachStatus, encodePreamble, REPLY_BYTES } from '../../proto/wire.js';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import { echoServer, startGateway, within } from '../helpers/harness.js';
import { dataConnect, rpc } from '../helpers/rpc.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const tcpOffer = (nonce?: Buffer) => ({ kind: TransportKind.TRANSPORT_KIND_TCP, version: 1, params: nonce ? { $case: 'tcp' as const, tcp: { openNonce: nonce } } : undefined });

async function setup(t: { teardown(fn: () => unknown): void }) {
  const echo = await echoServer();
  const gw = await startGateway({ transports: { enabled: ['tcp', 'grpc'] }, limits: { data_preamble_timeout_ms: 600 } });
  const client = new SocketGatewayServiceClient(gw.target, credentials.createInsecure());
  t.teardown(async () => {
    client.close();
    await echo.close();
    await gw.stop();
  });
  // The data port, from an ordinary negotiation.
  const probe = await rpc(client, client.connect, { uri: echo.uri, offers: [tcpOffer()], timeoutMs: 0, options: [] });
  const p = probe.negotiation!.accepted!.params;
  if (p?.$case !== 'tcp') throw new Error('tcp not accepted');
  await rpc(client, client.closeSocket, { socketId: probe.socketId });
  return { echo, gw, client, data: { host: p.tcp.host, port: p.tcp.port } };
}

test('a data connection that comes before its Connect is linked by the time the Connect answers', async (t) => {
  const { echo, client, data } = await setup(t);
  const nonce = randomBytes(32);
  const conn = await dataConnect(data, encodePreamble(nonce));
  await new Promise((r) => setTimeout(r, 50)); // it waits at the gateway now
  const res = await rpc(client, client.connect, { uri: echo.uri, offers: [tcpOffer(nonce)], timeoutMs: 0, options: [] });
  t.true(Buffer.from(res.negotiation!.accepted!.attachToken).equals(nonce), 'the nonce was issued as the token');
  const info = await rpc(client, client.getInfo, { socketId: res.socketId });
  t.is(info.info?.state, SocketState.SOCKET_STATE_OPEN, 'linked without any attach after the Connect');
  await within(conn.waitBytes(REPLY_BYTES, 3_000), 3_000, 'reply');
  t.is(conn.replyStatus(), AttachStatus.OK);
  const payload = randomBytes(200_000);
  conn.sock.end(payload);
  await within(conn.closed, 10_000, 'echo to the end');
  t.is(sha(conn.received().subarray(REPLY_BYTES)), sha(payload));
});

test('a nonce never issued is refused at the preamble timeout; a spent nonce is not issued again', async (t) => {
  const { echo, client, data } = await setup(t);
  const orphan = await dataConnect(data, encodePreamble(randomBytes(32)));
  await within(orphan.waitBytes(REPLY_BYTES, 3_000), 3_000, 'refusal');
  t.is(orphan.replyStatus(), AttachStatus.WRONG_TOKEN);

  const nonce = randomBytes(32);
  const first = await rpc(client, client.connect, { uri: echo.uri, offers: [tcpOffer(nonce)], timeoutMs: 0, options: [] });
  t.true(Buffer.from(first.negotiation!.accepted!.attachToken).equals(nonce), 'a fresh nonce is taken (Connect first, connection after)');
  const conn = await dataConnect(data, encodePreamble(nonce));
  await within(conn.waitBytes(REPLY_BYTES, 3_000), 3_000, 'reply');
  t.is(conn.replyStatus(), AttachStatus.OK);
  const again = await rpc(client, client.connect, { uri: echo.uri, offers: [tcpOffer(nonce)], timeoutMs: 0, options: [] });
  t.false(Buffer.from(again.negotiation!.accepted!.attachToken).equals(nonce), 'a spent nonce gets a fresh token');
  const replay = await dataConnect(data, encodePreamble(nonce));
  await within(replay.waitBytes(REPLY_BYTES, 3_000), 3_000, 'replay refused');
  t.is(replay.replyStatus(), AttachStatus.REPLAYED);
  conn.sock.destroy();
});

test('SDK: the second and later connects open in parallel (no attach after Connect), bytes intact, server speaking first too', async (t) => {
  const { gw, echo } = await setup(t);
  const greeting = randomBytes(3_000);
  const greeter = createServer((c: Socket) => {
    c.on('error', () => {});
    c.end(greeting);
  });
  greeter.listen(0, '127.0.0.1');
  await once(greeter, 'listening');
  t.teardown(() => greeter.close());
  const sdk = await SdkGateway.connect(gw.target, { transports: ['tcp'] });
  t.teardown(() => sdk.close());
  let attaches = 0;
  const internals = sdk as unknown as { attachWith: (...a: unknown[]) => Promise<unknown> };
  const orig = internals.attachWith.bind(sdk);
  internals.attachWith = (...a: unknown[]) => {
    attaches++;
    return orig(...a);
  };
  const readAll = (s: NodeJS.ReadableStream) =>
    new Promise<Buffer>((resolve, reject) => {
      const parts: Buffer[] = [];
      s.on('data', (c: Buffer) => parts.push(c));
      s.once('end', () => resolve(Buffer.concat(parts)));
      s.once('error', reject);
    });
  const uri = `tcp://127.0.0.1:${(greeter.address() as { port: number }).port}`;
  for (let i = 0; i < 5; i++) {
    const s = await sdk.connect(uri);
    t.is(sha(await within(readAll(s), 5_000, 'greeting')), sha(greeting), `greeting ${i}`);
    s.destroy();
  }
  for (let i = 0; i < 5; i++) {
    const s = await sdk.connect(echo.uri);
    const payload = randomBytes(100_000);
    const got = readAll(s);
    s.end(payload);
    t.is(sha(await within(got, 5_000, 'echo')), sha(payload), `echo ${i}`);
  }
  t.is(attaches, 1, 'only the first connect attached after its Connect (it learned the data port)');
});
