/**
 * The shm client transport: one shm session per Gateway object (attach-shm.ts),
 * a ring channel per socket, and the native link of a caller's fd to the slot's
 * rings on the SDK's client pump (link.ts dispatches here).
 */
import type { Socket } from 'node:net';
import type { LinkEnd as PumpLinkEnd } from '../../native/index.js';
import { ConnectionResetError, RingCorruptError } from '../../proto/errors.js';
import { SessionClientTransport, registerClientTransport, type ClientTransportContext } from './client-transport.js';
import type { ShmAttach, ShmOffer } from '../../proto/gen/sockgate/v1/transport.js';
import { ShmClient, shmSupport } from './attach-shm.js';
import { nativeLinkHandle, systemError, takeCaller, type GatewayLink, type LinkDeps, type LinkEnded, type OpenedChannel } from './link.js';
import type { NativeModule } from './native-optional.js';
import { ShmChannel } from './shm-channel.js';

/** The shm transport of one Gateway object. */
export class ShmTransport extends SessionClientTransport<ShmAttach, ShmOffer, ShmClient> {
  constructor(ctx: ClientTransportContext) {
    super(
      'shm',
      () => new ShmClient(ctx.options.shm ?? {}),
      (a) => (a.params?.$case === 'shm' ? a.params.shm : undefined),
      (shm) => ({ $case: 'shm', shm }),
    );
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
  return nativeLinkHandle(deps, meta, ended, {
    toTarget: () => (final ? final.totalToRing : link.raw.totals()[1]),
    fromTarget: () => (final ? final.totalToFd : link.raw.totals()[0]),
    drain: () => link.shutdownRead(),
    abort: () => {
      if (final) return;
      aborted = true;
      void link.close({ reset: true });
    },
  });
}


registerClientTransport({
  name: 'shm',
  unsupported: () => (shmSupport.available ? '' : shmSupport.reason),
  create: (ctx) => new ShmTransport(ctx),
  nativeBlocker: ({ inner }) => (inner instanceof ShmChannel ? (inner.touched ? 'the shm channel was read from JS already' : '') : 'the shm channel is not a ring channel'),
  linkNative: linkShm,
});
