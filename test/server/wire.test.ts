/**
 * Data-plane wire formats: the tcp-plane preamble and reply, datagram framing
 * over a byte stream, and the grpc plane's hand codec for payload frames
 * (byte-identical to the generated one, with a fallback for everything else).
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { PassThrough, Duplex } from 'node:stream';
import { DataRequest, DataResponse, SocketGatewayServiceService } from '../../proto/gen/sockgate/v1/sockgate.js';
import {
  AttachStatus,
  DatagramFramer,
  encodeDatagramFrame,
  encodePreamble,
  encodeReply,
  parsePreamble,
  parseReply,
  withFastDataCodec,
} from '../../proto/wire.js';
import type { ChannelDatagram } from '../../server/transport.js';

const fastService = withFastDataCodec(SocketGatewayServiceService);

test('hand codec: payload frames encode byte-identically to the generated codec, at every varint boundary', (t) => {
  for (const n of [0, 1, 127, 128, 300, 16383, 16384, 65536, 262144, 2097151, 2097152]) {
    const data = randomBytes(n);
    const generated = Buffer.from(DataRequest.encode({ frame: { $case: 'data', data } }).finish());
    const fast = fastService.data.requestSerialize({ frame: { $case: 'data', data } });
    t.true(fast.equals(generated), `request of ${n} bytes`);
    const back = fastService.data.requestDeserialize(generated);
    t.is(back.frame?.$case, 'data');
    t.true(Buffer.from((back.frame as { data: Buffer }).data).equals(data));
    const resp = fastService.data.responseSerialize({ frame: { $case: 'data', data } });
    t.true(resp.equals(Buffer.from(DataResponse.encode({ frame: { $case: 'data', data } }).finish())));
  }
});

test('hand codec: other frames and odd encodings go through the generated codec', (t) => {
  const token = randomBytes(32);
  const enc = fastService.data.requestSerialize({ frame: { $case: 'attachToken', attachToken: token } });
  t.deepEqual(fastService.data.requestDeserialize(enc), DataRequest.decode(enc));
  const eof = fastService.data.responseSerialize({ frame: { $case: 'eof', eof: true } });
  t.deepEqual(fastService.data.responseDeserialize(eof).frame, { $case: 'eof', eof: true });
  // A data field followed by another field is not the fast shape: decoded in full.
  const two = Buffer.concat([fastService.data.requestSerialize({ frame: { $case: 'data', data: Buffer.from('ab') } }), Buffer.from([0x18, 0x01])]);
  t.deepEqual(fastService.data.requestDeserialize(two), DataRequest.decode(two));
  // Truncated: the generated decoder decides (it throws; grpc-js turns that into a status).
  t.throws(() => fastService.data.requestDeserialize(Buffer.from([0x12, 0x05, 1, 2])));
});

test('preamble: round trip, partial input, bad magic, bad version, bad token length', (t) => {
  const token = randomBytes(32);
  const p = encodePreamble(token);
  for (let i = 0; i < p.length; i++) t.is(parsePreamble(p.subarray(0, i)).state, 'need-more', `prefix of ${i} bytes`);
  const ok = parsePreamble(Buffer.concat([p, Buffer.from('payload')]));
  t.is(ok.state, 'ok');
  if (ok.state === 'ok') {
    t.true(ok.token.equals(token));
    t.is(ok.rest.toString(), 'payload');
  }
  t.deepEqual(parsePreamble(Buffer.from('GET / HTTP/1.1\r\n')), { state: 'bad', status: AttachStatus.BAD_PREAMBLE, detail: 'bad magic' });
  const v2 = Buffer.from(p);
  v2[4] = 2;
  t.is((parsePreamble(v2) as { status: AttachStatus }).status, AttachStatus.VERSION_MISMATCH);
  const long = Buffer.from(p);
  long.writeUInt16BE(65535, 8);
  t.is((parsePreamble(long) as { status: AttachStatus }).status, AttachStatus.BAD_PREAMBLE);
  t.is(parseReply(encodeReply(AttachStatus.REPLAYED)), AttachStatus.REPLAYED);
  t.is(parseReply(Buffer.from('nonsense')), undefined);
});

test('datagram framing: boundaries survive arbitrary splits of the byte stream; oversize frames are protocol errors', async (t) => {
  const inner = new PassThrough();
  const framer = new DatagramFramer(inner as unknown as Duplex, 70_000);
  const sent: ChannelDatagram[] = [0, 1, 5, 1400, 65507].map((n, i) => ({ uri: i % 2 ? `udp://127.0.0.1:${1000 + i}` : '', payload: randomBytes(n) }));
  const got: ChannelDatagram[] = [];
  framer.on('data', (d: ChannelDatagram) => got.push(d));
  // Feed the encoded frames in 7-byte slices.
  const bytes = Buffer.concat(sent.flatMap((d) => encodeDatagramFrame(d)));
  for (let i = 0; i < bytes.length; i += 7) inner.write(bytes.subarray(i, i + 7));
  await new Promise((r) => setImmediate(r));
  t.is(got.length, sent.length);
  for (let i = 0; i < sent.length; i++) {
    t.is(got[i]!.uri, sent[i]!.uri);
    t.true(got[i]!.payload.equals(sent[i]!.payload));
  }
  const bad = Buffer.alloc(6);
  bad.writeUInt32BE(1 << 30, 0);
  const err = new Promise<Error>((resolve) => framer.once('error', resolve));
  inner.write(bad);
  t.regex((await err).message, /bad datagram frame/);
});
