/**
 * The Firecracker / Cloud Hypervisor Unix-socket form of vsock, client half on
 * the VMM host: to reach a guest listening on vsock port P, connect to the VMM's
 * `uds_path`, send `CONNECT P\n`, and read `OK <host_port>\n`; from then on the
 * Unix stream is the connection to the guest. (The other direction, a guest
 * connecting to host port P, arrives on `<uds_path>_P`: the gateway's `vsock_uds`
 * option listens there.)
 */
import { connect as netConnect, type Socket } from 'node:net';
import { ConnectRefusedError, ConnectTimeoutError, ProtocolError, fromSystemError } from '../../proto/errors.js';
import { tracer } from '../../native/trace.js';

const trace = tracer('vsock-uds');

/** The VMM answers within this time or the dial fails (a VMM answers at once; a stuck one should not hang a forward). */
export const VSOCK_UDS_CONNECT_TIMEOUT_MS = 5_000;
/** Longest acknowledgement line accepted: `OK ` + a u32 + `\n` is 14 bytes; anything longer is not the VMM. */
const MAX_ACK_BYTES = 64;

/** The request line for guest port `port`. */
export function connectLine(port: number): string {
  return `CONNECT ${port}\n`;
}

/** Parse an acknowledgement line (without `\n`): the host-side port the VMM assigned, or undefined. */
export function parseAck(line: string): number | undefined {
  const m = /^OK ([0-9]{1,10})$/.exec(line);
  return m ? Number(m[1]) : undefined;
}

export interface VsockUdsDialOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * Connect to guest vsock port `port` through the VMM's Unix socket `udsPath`.
 * Resolves with the stream (half-close enabled, paused, any bytes after the
 * acknowledgement put back) and the host port the VMM assigned.
 */
export function dialVsockUds(udsPath: string, port: number, opts: VsockUdsDialOptions = {}): Promise<{ socket: Socket; hostPort: number }> {
  const what = `vsock-uds ${udsPath} port ${port}`;
  return new Promise((resolve, reject) => {
    const sock = netConnect({ path: udsPath, allowHalfOpen: true });
    let got = '';
    const done = (err: Error | undefined, hostPort = 0, rest?: Buffer) => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      sock.removeListener('data', onData);
      sock.removeListener('error', onError);
      sock.removeListener('end', onEnd);
      sock.removeListener('connect', onConnect);
      if (err) {
        sock.destroy();
        trace(`${what}: ${err.message}`);
        return reject(err);
      }
      sock.pause();
      if (rest?.length) sock.unshift(rest);
      trace(`${what}: connected (host port ${hostPort})`);
      resolve({ socket: sock, hostPort });
    };
    const onAbort = () => done(new ConnectTimeoutError(`${what}: aborted`));
    const onError = (err: Error) => done(fromSystemError(err, what));
    // The VMM closes without a reply when nothing in the guest listens on the port.
    const onEnd = () => done(new ConnectRefusedError(`${what}: the VMM closed the connection without "OK": nothing in the guest listens on vsock port ${port}`));
    const onConnect = () => sock.write(connectLine(port));
    const onData = (chunk: Buffer) => {
      const nl = chunk.indexOf(0x0a);
      const head = chunk.subarray(0, nl < 0 ? chunk.length : nl).toString('latin1');
      got += head;
      if (got.length > MAX_ACK_BYTES) return done(new ProtocolError(`${what}: no acknowledgement line within ${MAX_ACK_BYTES} bytes`));
      if (nl < 0) return;
      const hostPort = parseAck(got);
      if (hostPort === undefined) return done(new ProtocolError(`${what}: expected "OK <port>", got ${JSON.stringify(got)}`));
      done(undefined, hostPort, chunk.subarray(nl + 1));
    };
    const timer = setTimeout(
      () => done(new ConnectTimeoutError(`${what}: no acknowledgement within ${opts.timeoutMs ?? VSOCK_UDS_CONNECT_TIMEOUT_MS} ms`)),
      opts.timeoutMs ?? VSOCK_UDS_CONNECT_TIMEOUT_MS,
    );
    if (opts.signal?.aborted) return onAbort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    sock.on('connect', onConnect);
    sock.on('data', onData);
    sock.on('error', onError);
    sock.on('end', onEnd);
  });
}
