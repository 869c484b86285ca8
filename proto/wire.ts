/**
 * Data-plane wire formats shared by the gateway and the SDK.
 *
 * TCP data plane. The client opens a TCP connection to the data port and sends
 * the attach preamble (all integers big-endian):
 *
 *   0  magic    "SGA1"  (4 bytes)
 *   4  version  u8      (1)
 *   5  flags    u8      (0; reserved)
 *   6  reserved u16     (0)
 *   8  tok_len  u16     (32)
 *  10  token    tok_len bytes
 *
 * The gateway answers with 8 bytes: "SGA1", status u8 (AttachStatus), 3 reserved
 * zero bytes; on anything but OK it closes the connection. Parallel open: the
 * token may be a 32-byte nonce the client also put in its Connect's tcp offer
 * (TcpOffer.open_nonce), sent before the Connect is answered; the gateway holds
 * such a connection until it issues that token (limits.data_parallel_open_wait_ms),
 * then answers as above. A clean end of stream (FIN) is confirmed over the
 * control plane (ConfirmEnds): the raw plane cannot tell it from the gateway's death. After OK, a stream
 * socket's raw bytes flow; a datagram socket's datagrams flow as frames:
 *
 *   0  frame_len u32   (bytes after this field: 2 + uri_len + payload)
 *   4  uri_len   u16
 *   6  uri       uri_len bytes (UTF-8; empty = the connected peer)
 *      payload   frame_len - 2 - uri_len bytes
 */
import { Duplex } from 'node:stream';
import { ProtocolError } from './errors.js';

/** One datagram on a datagram channel. `uri` empty means the connected peer. */
export interface ChannelDatagram {
  uri: string;
  payload: Buffer;
}

export const PREAMBLE_MAGIC = Buffer.from('SGA1', 'ascii');
export const TCP_PLANE_VERSION = 1;
export const PREAMBLE_FIXED_BYTES = 10;
export const REPLY_BYTES = 8;
/** Longest token a preamble may carry; a longer one is garbage, not a token. */
export const MAX_TOKEN_BYTES = 64;
/** Longest URI in a datagram frame. */
export const MAX_FRAME_URI_BYTES = 1024;
/** A gRPC data message carries at most this much coalesced payload (well under the 4 MiB message cap). */
export const COALESCE_BYTES = 256 * 1024;
/** Largest UDP payload a frame can carry (IPv6 jumbograms are out of scope). */
export const MAX_FRAME_PAYLOAD_BYTES = 65535;

export enum AttachStatus {
  OK = 0,
  BAD_PREAMBLE = 1,
  VERSION_MISMATCH = 2,
  WRONG_TOKEN = 3,
  REPLAYED = 4,
  EXPIRED = 5,
  WRONG_TRANSPORT = 6,
  INTERNAL = 7,
}

export function encodePreamble(token: Uint8Array): Buffer {
  const b = Buffer.alloc(PREAMBLE_FIXED_BYTES + token.length);
  PREAMBLE_MAGIC.copy(b, 0);
  b.writeUInt8(TCP_PLANE_VERSION, 4);
  b.writeUInt16BE(token.length, 8);
  b.set(token, PREAMBLE_FIXED_BYTES);
  return b;
}

export type PreambleParse =
  | { state: 'need-more' }
  | { state: 'bad'; status: AttachStatus; detail: string }
  | { state: 'ok'; token: Buffer; rest: Buffer };

/** Parse a preamble from the bytes received so far. */
export function parsePreamble(buf: Buffer): PreambleParse {
  const magicBytes = Math.min(buf.length, 4);
  if (!buf.subarray(0, magicBytes).equals(PREAMBLE_MAGIC.subarray(0, magicBytes))) {
    return { state: 'bad', status: AttachStatus.BAD_PREAMBLE, detail: 'bad magic' };
  }
  if (buf.length < PREAMBLE_FIXED_BYTES) return { state: 'need-more' };
  if (buf.readUInt8(4) !== TCP_PLANE_VERSION) return { state: 'bad', status: AttachStatus.VERSION_MISMATCH, detail: `version ${buf.readUInt8(4)}` };
  const len = buf.readUInt16BE(8);
  if (len === 0 || len > MAX_TOKEN_BYTES) return { state: 'bad', status: AttachStatus.BAD_PREAMBLE, detail: `token length ${len}` };
  if (buf.length < PREAMBLE_FIXED_BYTES + len) return { state: 'need-more' };
  return { state: 'ok', token: buf.subarray(PREAMBLE_FIXED_BYTES, PREAMBLE_FIXED_BYTES + len), rest: buf.subarray(PREAMBLE_FIXED_BYTES + len) };
}

export function encodeReply(status: AttachStatus): Buffer {
  const b = Buffer.alloc(REPLY_BYTES);
  PREAMBLE_MAGIC.copy(b, 0);
  b.writeUInt8(status, 4);
  return b;
}

export function parseReply(buf: Buffer): AttachStatus | undefined {
  if (buf.length < REPLY_BYTES || !buf.subarray(0, 4).equals(PREAMBLE_MAGIC)) return undefined;
  return buf.readUInt8(4) as AttachStatus;
}

export function encodeDatagramFrame(d: ChannelDatagram): Buffer[] {
  const uri = Buffer.from(d.uri, 'utf8');
  if (uri.length > MAX_FRAME_URI_BYTES) throw new ProtocolError(`datagram URI longer than ${MAX_FRAME_URI_BYTES} bytes`);
  const head = Buffer.alloc(6 + uri.length);
  head.writeUInt32BE(2 + uri.length + d.payload.length, 0);
  head.writeUInt16BE(uri.length, 4);
  uri.copy(head, 6);
  return [head, d.payload];
}

/**
 * Datagrams over a byte stream: an object-mode Duplex of ChannelDatagram on
 * top of `inner`, framed as above. Bounded: a frame longer than the limits is a
 * protocol error that destroys the stream.
 */
export class DatagramFramer extends Duplex {
  /** Bytes received but not yet a whole frame. */
  private pending: Buffer = Buffer.alloc(0);

  constructor(
    private readonly inner: Duplex,
    private readonly maxPayload: number = MAX_FRAME_PAYLOAD_BYTES,
  ) {
    super({ readableObjectMode: true, writableObjectMode: true, allowHalfOpen: true, readableHighWaterMark: 64, writableHighWaterMark: 64 });
    inner.on('data', (chunk: Buffer) => this.onBytes(chunk));
    inner.on('end', () => {
      if (this.pending.length) this.destroy(new ProtocolError(`stream ended inside a datagram frame (${this.pending.length} bytes left)`));
      else this.push(null);
    });
    inner.on('error', (err) => this.destroy(err));
    inner.on('close', () => {
      if (!this.destroyed && !this.readableEnded) this.destroy();
    });
    inner.on('drain', () => this.emit('inner-drain'));
  }

  private onBytes(chunk: Buffer): void {
    let buf = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    let more = true;
    while (buf.length >= 6) {
      const frameLen = buf.readUInt32BE(0);
      const uriLen = buf.readUInt16BE(4);
      if (uriLen > MAX_FRAME_URI_BYTES || frameLen < 2 + uriLen || frameLen - 2 - uriLen > this.maxPayload) {
        this.destroy(new ProtocolError(`bad datagram frame: length ${frameLen}, uri length ${uriLen} (max payload ${this.maxPayload})`));
        return;
      }
      if (buf.length < 4 + frameLen) break;
      const uri = buf.toString('utf8', 6, 6 + uriLen);
      // Copy the payload out so a frame does not pin the whole read buffer.
      const payload = Buffer.from(buf.subarray(6 + uriLen, 4 + frameLen));
      buf = buf.subarray(4 + frameLen);
      more = this.push({ uri, payload } satisfies ChannelDatagram);
    }
    this.pending = buf.length ? Buffer.from(buf) : Buffer.alloc(0);
    if (!more) this.inner.pause();
  }

  override _read(): void {
    this.inner.resume();
  }

  override _write(d: ChannelDatagram, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    let parts: Buffer[];
    try {
      parts = encodeDatagramFrame(d);
    } catch (err) {
      cb(err as Error);
      return;
    }
    this.inner.write(parts[0]);
    if (this.inner.write(parts[1])) cb();
    else this.inner.once('drain', () => cb());
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.inner.end(cb);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.inner.destroy(err ?? undefined);
    cb(err);
  }
}

/** How a message-stream channel maps frames; one per direction of use (gateway, SDK). */
export interface FrameCodec<In, Out> {
  /** Encode payload bytes (stream mode) into an outgoing message. */
  data(chunk: Buffer): Out;
  /** Encode a datagram (datagram mode). */
  datagram(d: ChannelDatagram): Out;
  /** Encode end-of-stream. */
  eof(): Out;
  /** Decode an incoming message. */
  decode(msg: In): { kind: 'data'; data: Buffer } | { kind: 'datagram'; datagram: ChannelDatagram } | { kind: 'eof' } | { kind: 'other' };
}

/** The payload cases both grpc-plane messages share (DataRequest, DataResponse). */
type PayloadFrame =
  | { $case: 'data'; data: Buffer }
  | { $case: 'datagram'; datagram: { uri: string; payload: Buffer } }
  | { $case: 'eof'; eof: boolean }
  | { $case: string };

/**
 * The grpc plane's frame mapping, the same for the gateway (DataRequest in,
 * DataResponse out) and the SDK (the other way round): payload, datagrams and
 * end of stream are the same oneof cases in both messages.
 */
export function payloadCodec<In extends { frame?: unknown }, Out>(): FrameCodec<In, Out> {
  const out = (frame: PayloadFrame) => ({ frame }) as unknown as Out;
  return {
    data: (chunk) => out({ $case: 'data', data: chunk }),
    datagram: (d) => out({ $case: 'datagram', datagram: { uri: d.uri, payload: d.payload } }),
    eof: () => out({ $case: 'eof', eof: true }),
    decode: (msg) => {
      const f = msg.frame as PayloadFrame | undefined;
      if (f?.$case === 'data' && 'data' in f) return { kind: 'data', data: f.data };
      if (f?.$case === 'datagram' && 'datagram' in f) return { kind: 'datagram', datagram: { uri: f.datagram.uri, payload: f.datagram.payload } };
      if (f?.$case === 'eof') return { kind: 'eof' };
      return { kind: 'other' };
    },
  };
}

/**
 * A byte (or datagram) Duplex over an object-mode message stream such as a
 * gRPC bidi call. Backpressure both ways: writes wait for the call's 'drain',
 * and a full readable buffer pauses the call.
 */
export class MessageChannel<In, Out> extends Duplex {
  constructor(
    private readonly call: Duplex,
    private readonly codec: FrameCodec<In, Out>,
    readonly mode: 'stream' | 'datagram',
    highWatermark: number,
    /** Ends the call with an error (server: a status; client: cancel). */
    private readonly abort: (err: Error) => void,
  ) {
    super({
      allowHalfOpen: true,
      readableObjectMode: mode === 'datagram',
      writableObjectMode: mode === 'datagram',
      ...(mode === 'stream' ? { readableHighWaterMark: highWatermark, writableHighWaterMark: highWatermark } : {}),
    });
    call.on('data', (msg: In) => this.onMessage(msg));
    call.on('end', () => {
      // The peer ended the call without an eof frame: the stream is over either way.
      if (!this.readableEnded) this.push(null);
    });
    call.on('error', (err) => this.destroy(err));
    call.on('close', () => {
      if (!this.destroyed && !(this.readableEnded && this.writableFinished)) {
        if (!this.readableEnded) this.destroy(new ProtocolError('data stream closed before end of stream'));
      }
    });
  }

  private onMessage(msg: In): void {
    if (this.readableEnded) return;
    const m = this.codec.decode(msg);
    let more = true;
    switch (m.kind) {
      case 'data':
        if (this.mode !== 'stream') return void this.destroy(new ProtocolError('data frame on a datagram channel'));
        more = this.push(m.data);
        break;
      case 'datagram':
        if (this.mode !== 'datagram') return void this.destroy(new ProtocolError('datagram frame on a stream channel'));
        more = this.push(m.datagram);
        break;
      case 'eof':
        this.push(null);
        return;
      case 'other':
        return void this.destroy(new ProtocolError('unexpected frame on the data stream'));
    }
    if (!more) this.call.pause();
  }

  override _read(): void {
    this.call.resume();
  }

  override _write(chunk: Buffer | ChannelDatagram, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this._writev([{ chunk }], cb);
  }

  /**
   * Queued writes go out coalesced, up to COALESCE_BYTES a message: the cost
   * of a gRPC message is per message, so many small writes must not become
   * many messages.
   */
  override _writev(chunks: { chunk: Buffer | ChannelDatagram }[], cb: (err?: Error | null) => void): void {
    let ok = true;
    if (this.mode === 'datagram') {
      for (const { chunk } of chunks) ok = this.call.write(this.codec.datagram(chunk as ChannelDatagram));
    } else {
      let batch: Buffer[] = [];
      let size = 0;
      const flush = () => {
        if (!batch.length) return;
        ok = this.call.write(this.codec.data(framedPayload(batch, size)));
        batch = [];
        size = 0;
      };
      for (const { chunk } of chunks) {
        const whole = chunk as Buffer;
        // A write larger than a message is split: one gRPC message never exceeds COALESCE_BYTES of payload.
        let off = 0;
        do {
          const b = whole.length <= COALESCE_BYTES ? whole : whole.subarray(off, off + COALESCE_BYTES);
          if (size > 0 && size + b.length > COALESCE_BYTES) flush();
          batch.push(b);
          size += b.length;
          off += COALESCE_BYTES;
        } while (off < whole.length);
      }
      flush();
    }
    if (ok) cb();
    else this.call.once('drain', () => cb());
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.call.write(this.codec.eof());
    cb();
    this.maybeEndCall();
  }

  /** End the call once both directions are done (its status ends the RPC). */
  private maybeEndCall(): void {
    if (this.writableFinished || this.writableEnded) {
      if (this.readableEnded) this.call.end();
      else this.once('end', () => this.call.end());
    }
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (err) this.abort(err);
    else if (!this.call.writableEnded) this.call.end();
    cb(err);
  }
}

/**
 * The `grpc` plane's payload frames, serialized by hand. Both DataRequest and
 * DataResponse carry payload as field 2 (`bytes data`): the generated codec
 * copies a payload three times to encode it and once to decode it; this one
 * copies once to encode and decodes as a view into the received message.
 * Every other frame goes through the generated codec.
 */
const DATA_TAG = 0x12; // field 2, wire type 2 (length-delimited)

function varintLength(n: number): number {
  let len = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    len++;
  }
  return len;
}

function encodeDataFrame(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(1 + varintLength(payload.length) + payload.length);
  out[0] = DATA_TAG;
  let n = payload.length;
  let i = 1;
  while (n >= 0x80) {
    out[i++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 128);
  }
  out[i++] = n;
  out.set(payload, i);
  return out;
}

/**
 * Payload views whose wire form (DATA_TAG, length, payload) is already built
 * around them, by framedPayload: the fast codec sends that buffer as is.
 * Weak: a view dropped without being sent leaves nothing behind.
 */
const FRAMED = new WeakMap<Uint8Array, Buffer>();

/**
 * `chunks` (`size` bytes in all) copied once into a message already in wire
 * form; returns the payload view of it. One copy instead of two (a concat,
 * then the encoder's) for a coalesced batch; the generated codec, which does
 * not know the map, still reads a correct payload.
 */
export function framedPayload(chunks: readonly Buffer[], size: number): Buffer {
  const head = 1 + varintLength(size);
  const out = Buffer.allocUnsafe(head + size);
  out[0] = DATA_TAG;
  let n = size;
  let i = 1;
  while (n >= 0x80) {
    out[i++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 128);
  }
  out[i] = n;
  let off = head;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  const payload = out.subarray(head);
  FRAMED.set(payload, out);
  return payload;
}

/** The payload view of a message that is exactly one `data` field, else undefined. */
function decodeDataFrame(buf: Buffer): Buffer | undefined {
  if (buf.length < 2 || buf[0] !== DATA_TAG) return undefined;
  let len = 0;
  let shift = 1;
  let i = 1;
  for (; i < buf.length && i < 6; i++) {
    const b = buf[i]!;
    len += (b & 0x7f) * shift;
    shift *= 128;
    if (b < 0x80) {
      i++;
      return i + len === buf.length ? buf.subarray(i) : undefined;
    }
  }
  return undefined;
}

interface DataMethod<Req, Res> {
  requestSerialize(value: Req): Buffer;
  requestDeserialize(value: Buffer): Req;
  responseSerialize(value: Res): Buffer;
  responseDeserialize(value: Buffer): Res;
}

type DataFrameShape = { frame?: { $case: string; data?: Uint8Array } | undefined };

function fast<T extends DataFrameShape>(encode: (v: T) => Buffer, decode: (b: Buffer) => T): { ser: (v: T) => Buffer; de: (b: Buffer) => T } {
  return {
    ser: (v) => (v.frame?.$case === 'data' && v.frame.data ? (FRAMED.get(v.frame.data) ?? encodeDataFrame(v.frame.data)) : encode(v)),
    de: (b) => {
      const data = decodeDataFrame(b);
      return data ? ({ frame: { $case: 'data', data } } as unknown as T) : decode(b);
    },
  };
}

/** A copy of the generated service definition whose `data` method uses the hand codec. */
export function withFastDataCodec<S extends { data: DataMethod<Req, Res> }, Req extends DataFrameShape, Res extends DataFrameShape>(service: S): S {
  const req = fast<Req>(service.data.requestSerialize, service.data.requestDeserialize);
  const res = fast<Res>(service.data.responseSerialize, service.data.responseDeserialize);
  return {
    ...service,
    data: { ...service.data, requestSerialize: req.ser, requestDeserialize: req.de, responseSerialize: res.ser, responseDeserialize: res.de },
  };
}
