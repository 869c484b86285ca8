/**
 * The tcp-plane client transport: a data connection per socket to the
 * gateway's data port (attach-plane.ts; opened alongside the Connect when it
 * can, tcp-parallel.ts), and the native link of a caller's fd to it with
 * splice(2) on a pump of the SDK's own (link.ts dispatches here).
 */
import { Socket } from 'node:net';
import type { Pump, SpliceEnd } from '../../native/index.js';
import { AttachFailedError, ConnectionResetError, GatewayUnavailableError, SockgateError } from '../../proto/errors.js';
import { attachTcp } from './attach-plane.js';
import { isSmcDataConnection, smcDialOf } from './smc-dial.js';
import { registerClientTransport, type ClientTransport, type ClientTransportContext } from './client-transport.js';
import { takeFd } from './fd-handover.js';
import { nativeLinkHandle, systemError, takeCaller, type GatewayLink, type LinkDeps, type LinkEnded, type OpenedChannel } from './link.js';
import type { NativeModule } from './native-optional.js';

/** Splice pipe per direction: about bandwidth x round trip on a host, like the gateway's relay. */
const SPLICE_PIPE_BYTES = 1 << 20;

let splicePump: Pump | undefined;

function pumpFor(n: NativeModule): Pump {
  splicePump ??= new n.Pump(() => {}, { unrefWhenIdle: true });
  return splicePump;
}

export class TcpTransport implements ClientTransport {
  constructor(private readonly ctx: ClientTransportContext) {}

  offer(): ReturnType<ClientTransport['offer']> {
    return undefined;
  }

  attach(...[accepted, mode, opts]: Parameters<ClientTransport['attach']>): ReturnType<ClientTransport['attach']> {
    if (accepted.params?.$case !== 'tcp') return Promise.reject(new AttachFailedError('tcp attach: the gateway sent no data address'));
    const { host, port, vsockPort } = accepted.params.tcp;
    // A vsock client dials the advertised vsock data port on the gateway's CID (host:port is not reachable from a VM).
    const viaVsock = this.ctx.vsock && vsockPort ? { cid: this.ctx.vsock.vsock.cid, port: vsockPort } : undefined;
    if (!viaVsock && mode === 'stream') this.ctx.parallel.learn(host, port);
    return attachTcp(viaVsock ? { vsock: viaVsock } : { host, port }, accepted.attachToken, mode, opts.signal, smcDialOf(this.ctx.options));
  }

  close(): void {}
}

function linkTcp(deps: LinkDeps, n: NativeModule, caller: Socket | number, opened: OpenedChannel, pre: readonly Buffer[]): GatewayLink {
  const data = opened.inner as Socket;
  const { meta } = opened;
  const takeData = takeFd(n, data);
  if (!takeData) throw new ConnectionResetError('the data connection has no usable descriptor');
  const take = takeCaller(n, caller);
  if (!take) {
    takeData.undo();
    throw new ConnectionResetError('the caller socket has no usable descriptor');
  }
  let link;
  try {
    // "client" = the data connection, "host" = the caller: its prefix is what the gateway sent that JS had read.
    link = pumpFor(n).splice(takeData.fd, take.fd, { toHostPrefix: takeData.prefix, toClientPrefix: [...pre, ...take.prefix], pipeBytes: SPLICE_PIPE_BYTES });
  } catch (err) {
    takeData.undo();
    take.undo();
    throw err;
  }
  link.raw.mute();
  takeData.give();
  take.give();
  let final: SpliceEnd | undefined;
  let aborted = false;
  const what = `link ${meta.socketId} (tcp)`;
  const ended = link.ended.then(async (end): Promise<LinkEnded> => {
    final = end;
    if (end.reason === 'ok') {
      if (!opened.confirmEof) return { reason: 'ok' };
      // A FIN on the raw tcp plane looks the same whether the target ended or the gateway died: ask.
      try {
        await deps.confirmEnd(meta.socketId);
        return { reason: 'ok' };
      } catch (err) {
        return { reason: 'error', error: err instanceof SockgateError ? err : new GatewayUnavailableError((err as Error).message) };
      }
    }
    void deps.closeRemote(meta.socketId);
    if (aborted) return { reason: 'aborted' };
    return { reason: 'error', error: end.reason === 'error' ? systemError(end.code, end.errno, what) : new ConnectionResetError(`${what}: aborted`) };
  });
  return nativeLinkHandle(deps, meta, ended, {
    toTarget: () => (final ? final.totalToClient : link.raw.totals()[1]),
    fromTarget: () => (final ? final.totalToHost : link.raw.totals()[0]),
    drain: () => link.shutdownHost(true, false),
    abort: () => {
      if (final) return;
      aborted = true;
      void link.close({ reset: true });
    },
  });
}


registerClientTransport({
  name: 'tcp',
  unsupported: () => '',
  create: (ctx) => new TcpTransport(ctx),
  nativeBlocker: ({ inner }) =>
    !(inner instanceof Socket)
      ? 'the tcp data connection has no descriptor'
      : // splice(2) through an SMC-R socket corrupted data in the lab (server/data-channel.ts NativeDataChannel.splices).
        isSmcDataConnection(inner)
        ? 'an SMC data connection is not spliced'
        : '',
  linkNative: linkTcp,
});
