/**
 * The gateway's gRPC server advertises wider HTTP/2 windows (grpc-windows.ts):
 * a peer sees the stream window in SETTINGS and a connection window above
 * Node's 64 KiB default, and a framed batch is sent as built (one copy).
 */
import test from 'ava';
import { connect, type ClientHttp2Session } from 'node:http2';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import { DataRequest, SocketGatewayServiceService } from '../../proto/gen/sockgate/v1/sockgate.js';
import { GRPC_CONNECTION_WINDOW_BYTES, GRPC_STREAM_WINDOW_BYTES, widenGrpcWindows } from '../../server/grpc-windows.js';
import { framedPayload, withFastDataCodec } from '../../proto/wire.js';
import { createHash, randomBytes } from 'node:crypto';

const NODE_DEFAULT_WINDOW = 65_535;

test('a gRPC server widened by widenGrpcWindows advertises the stream and connection windows', async (t) => {
  const server = new Server();
  t.true(widenGrpcWindows(server));
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  let session: ClientHttp2Session | undefined;
  try {
    session = connect(`http://127.0.0.1:${port}`);
    const s = session;
    await new Promise<void>((resolve, reject) => {
      s.once('remoteSettings', () => resolve());
      s.once('error', reject);
    });
    t.is(s.remoteSettings.initialWindowSize, GRPC_STREAM_WINDOW_BYTES);
    // The connection window arrives as a WINDOW_UPDATE just after SETTINGS: wait (bounded) for it.
    const deadline = Date.now() + 5_000;
    while ((s.state.remoteWindowSize ?? 0) <= NODE_DEFAULT_WINDOW && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    t.is(s.state.remoteWindowSize, GRPC_CONNECTION_WINDOW_BYTES);
  } finally {
    session?.destroy();
    server.forceShutdown();
  }
});

test('framedPayload: one buffer in wire form, decoded back to the same bytes', (t) => {
  const chunks = [randomBytes(70_000), randomBytes(1), randomBytes(65_536), randomBytes(200)];
  const size = chunks.reduce((n, c) => n + c.length, 0);
  const payload = framedPayload(chunks, size);
  const want = createHash('sha256').update(Buffer.concat(chunks)).digest('hex');
  t.is(createHash('sha256').update(payload).digest('hex'), want);
  const fast = withFastDataCodec(SocketGatewayServiceService);
  const wire = fast.data.requestSerialize({ frame: { $case: 'data', data: payload } });
  // The framed buffer is sent as is: the payload view sits inside the wire buffer, not copied again.
  t.is(wire.buffer, payload.buffer);
  t.deepEqual(wire, SocketGatewayServiceService.data.requestSerialize({ frame: { $case: 'data', data: Buffer.concat(chunks) } }));
  const back = DataRequest.decode(wire);
  t.is(back.frame?.$case, 'data');
  t.is(createHash('sha256').update((back.frame as { data: Uint8Array }).data).digest('hex'), want);
});
