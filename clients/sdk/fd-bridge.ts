/**
 * A descriptor for a channel that has none (grpc frames, shm rings read in
 * JS): Gateway#openStream hands such channels out over a socketpair.
 */
import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { GatewayUnavailableError, NativeError, SockgateError, fromServiceError } from '../../proto/errors.js';
import { FdChannel } from './fd-channel.js';

/** Per-direction buffering of SDK-side channels (as gateway.ts's). */
const CHANNEL_HIGH_WATERMARK = 1 << 20;

/**
 * Carry a descriptor-less channel (grpc frames, shm rings read in JS) over a
 * socketpair: the returned end is an FdChannel (its EOF held until the channel
 * said how it ended), the other end is relayed to the channel here.
 */
export async function bridgeToFd(channel: Duplex, label: string): Promise<{ socket: FdChannel; failure: Promise<SockgateError | undefined> }> {
  let n: typeof import('../../native/index.js');
  try {
    n = await import('../../native/index.js');
  } catch (err) {
    throw new NativeError(`${label}: a descriptor for this channel needs the native addon (socketpair), which did not load: ${(err as Error).message}`, { cause: err });
  }
  const [ours, theirs] = n.socketpair();
  let outer: FdChannel;
  let relay: Socket;
  try {
    outer = new FdChannel({ fd: theirs, highWaterMark: CHANNEL_HIGH_WATERMARK, label });
  } catch (err) {
    n.closeFd(ours);
    n.closeFd(theirs);
    throw err;
  }
  try {
    relay = new Socket({ fd: ours, allowHalfOpen: true, readable: true, writable: true });
  } catch (err) {
    n.closeFd(ours);
    outer.destroy();
    throw err;
  }
  let resolveFailure!: (e: SockgateError | undefined) => void;
  const failure = new Promise<SockgateError | undefined>((r) => (resolveFailure = r));
  let channelEnded = false;
  const fail = (err: Error) => {
    const e = err instanceof SockgateError ? err : fromServiceError(err);
    resolveFailure(e);
    outer.settle(e);
    relay.destroy();
    channel.destroy();
  };
  // channel -> relay -> outer
  channel.on('data', (chunk: Buffer) => {
    if (!relay.write(chunk)) channel.pause();
  });
  relay.on('drain', () => channel.resume());
  channel.on('end', () => {
    channelEnded = true;
    outer.settle();
    relay.end();
  });
  // outer -> relay -> channel
  relay.on('data', (chunk: Buffer) => {
    if (!channel.write(chunk)) relay.pause();
  });
  channel.on('drain', () => relay.resume());
  relay.on('end', () => channel.end());
  channel.on('error', fail);
  relay.on('error', () => channel.destroy());
  channel.on('close', () => {
    if (!channelEnded) fail(new GatewayUnavailableError(`${label}: the data channel closed before its end of stream`));
    else resolveFailure(undefined);
  });
  relay.on('close', () => {
    if (!channel.destroyed && !channel.writableEnded) channel.destroy();
  });
  channel.resume();
  return { socket: outer, failure };
}

