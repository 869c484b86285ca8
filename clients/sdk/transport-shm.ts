/**
 * The shm client transport: one shm session per Gateway object (attach-shm.ts),
 * a ring channel per socket, and the native link of a caller's fd to the slot's
 * rings on the SDK's client pump (link.ts dispatches here).
 */
import type { Socket } from 'node:net';
import type { LinkEnd as PumpLinkEnd } from '../../native/index.js';
import { AttachFailedError, ConnectionResetError, RingCorruptError } from '../../proto/errors.js';
import { registerClientTransport, type ClientTransport, type ClientTransportContext } from './client-transport.js';
import { ShmClient, shmSupport } from './attach-shm.js';
import { base, systemError, takeCaller, type GatewayLink, type LinkDeps, type LinkEnded, type OpenedChannel } from './link.js';
import type { NativeModule } from './native-optional.js';
import { ShmChannel } from './shm-channel.js';

export class ShmTransport implements ClientTransport {
  #client: ShmClient | undefined;
  constructor(private readonly ctx: ClientTransportContext) {}

  /** The shm client, if created yet (tests read its sessions). */
  get client(): ShmClient | undefined {
    return this.#client;
  }

  #shm(): ShmClient {
    this.#client ??= new ShmClient(this.ctx.options.shm ?? {});
    return this.#client;
  }

  offer(): ReturnType<ClientTransport['offer']> {
    return { $case: 'shm', shm: this.#shm().offer() };
  }

  attach(...[accepted, mode, opts, label]: Parameters<ClientTransport['attach']>): ReturnType<ClientTransport['attach']> {
    if (mode !== 'stream') return Promise.reject(new AttachFailedError('shm carries stream sockets only'));
    if (accepted.params?.$case !== 'shm') return Promise.reject(new AttachFailedError('shm attach: the gateway sent no shm parameters'));
    return this.#shm().attach(accepted.params.shm, accepted.attachToken, label, opts.signal ? { signal: opts.signal } : {});
  }

  close(): void {
    void this.#client?.close();
  }
}

function linkShm(deps: LinkDeps, n: NativeModule, caller: Socket | number, opened: OpenedChannel, pre: readonly Buffer[]): GatewayLink {
  const ch = opened.inner as ShmChannel;
  const meta = opened.meta;
  const take = takeCaller(n, caller);
  if (!take) throw new ConnectionResetError('the caller socket has no usable descriptor');
  let sl;
  try {
    sl = ch.linkNative(take.fd, [...pre, ...take.prefix]);
  } catch (err) {
    take.undo();
    throw err;
  }
  take.give();
  const link = sl.link;
  let final: PumpLinkEnd | undefined;
  let aborted = false;
  const what = `link ${meta.socketId} (shm)`;
  const ended = sl.ended.then(({ end, error }): LinkEnded => {
    final = end;
    if (end.reason === 'ok' && !error) return { reason: 'ok' };
    // No CloseSocket here: the ABORT the session sends resets the gateway's host socket, and a
    // CloseSocket racing ahead of it would close that socket with a FIN instead.
    if (aborted) return { reason: 'aborted', ...(error ? { error } : {}) };
    const e = error ?? (end.reason === 'corrupt' ? new RingCorruptError(`${what}: the ring was corrupted`) : end.reason === 'error' ? systemError(end.code, end.errno, what) : new ConnectionResetError(`${what}: aborted`));
    return { reason: 'error', error: e };
  });
  deps.track({ destroy: () => handle.destroy() }, ended);
  const handle: GatewayLink = {
    ...base(meta),
    native: true,
    relayReason: '',
    bytes: {
      get toTarget() {
        return final ? final.totalToRing : link.raw.totals()[1];
      },
      get fromTarget() {
        return final ? final.totalToFd : link.raw.totals()[0];
      },
    },
    ended,
    close() {
      try {
        link.shutdownRead();
      } catch {
        // ended already
      }
    },
    destroy() {
      if (final) return;
      aborted = true;
      void link.close({ reset: true });
    },
  };
  return handle;
}


registerClientTransport({
  name: 'shm',
  unsupported: () => (shmSupport.available ? '' : shmSupport.reason),
  create: (ctx) => new ShmTransport(ctx),
  nativeBlocker: ({ inner }) => (inner instanceof ShmChannel ? (inner.touched ? 'the shm channel was read from JS already' : '') : 'the shm channel is not a ring channel'),
  linkNative: linkShm,
});
