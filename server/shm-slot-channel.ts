/**
 * An open shm slot as a socket's native data channel: the pump links the
 * slot's rings to the host socket, and the link's events drive the socket,
 * ring autotuning and the END message of an abnormal end.
 */
import type { Counter } from '@opentelemetry/api';
import type { HostSockopt, PumpLink } from '../native/index.js';
import type { LinkEvent, PumpHub } from '../native/pump-hub.js';
import { tracer } from '../native/trace.js';
import type { TransportKind } from '../proto/gen/sockgate/v1/transport.js';
import { CtlType, encodeCtl } from '../proto/shm-wire.js';
import type { Config } from './config.js';
import { applyHostOption } from './host-option.js';
import { autotune, type RingBudget } from './shm-ring-budget.js';
import type { Session, Slot } from './shm-session.js';
import type { HostOption, NativeDataChannel, NativeLink, NativeLinkEnd, NativeLinkEvents } from './transport.js';

const trace = tracer('shm');

/** What a slot's channel needs of the transport that owns the session. */
export interface SlotChannelHost {
  readonly kind: TransportKind;
  readonly native: typeof import('../native/index.js');
  readonly hub: PumpHub;
  readonly config: Config['transports']['shm'];
  readonly budget: RingBudget;
  readonly grows: Counter;
  /** Queue a control message to the session's client. */
  send(s: Session, msg: Buffer): void;
  /** Close an open slot (pages punched out) and free it. */
  closeSlot(s: Session, slotNo: number, slot: Slot): void;
}

/** The slot as a socket's native data channel: the pump links its rings to the host socket. */
export function slotChannel(host: SlotChannelHost, s: Session, slotNo: number, slot: Slot): NativeDataChannel {
  return {
    transport: host.kind,
    mode: 'native',
    start: (hostFd: number, prefix: Buffer[], events: NativeLinkEvents): NativeLink => {
      const native = host.native;
      const fd = native.dupFd(hostFd);
      let link: PumpLink;
      try {
        link = host.hub.pump.link(s.region!, slotNo, fd, prefix);
      } catch (err) {
        native.closeFd(fd);
        throw err;
      }
      slot.link = link;
      host.hub.onLink(link.id, (e) => onLinkEvent(host, s, slotNo, slot, e, events));
      const toEnd = (e: { reason: NativeLinkEnd['reason']; errno: number; code?: string }): NativeLinkEnd =>
        e.code === undefined ? { reason: e.reason, errno: e.errno } : { reason: e.reason, errno: e.errno, code: e.code };
      return {
        ended: link.ended.then(toEnd),
        close: () => link.close().then(toEnd),
        // The Shutdown RPC: shutdown(2) of the host socket in order with the rings.
        shutdownHost: (read: boolean, write: boolean) => link.shutdownHost(read, write),
        setHostOption: (o: HostOption) => applyHostOption(link, o, (err) => /link has ended/.test(String(err.message))),
        // Not in the seam: lets tests (and debugging) read what SetOption did to the descriptor.
        getHostSockopt: (name: HostSockopt) => link.getHostSockopt(name),
      } as NativeLink;
    },
  };
}

function onLinkEvent(host: SlotChannelHost, s: Session, slotNo: number, slot: Slot, e: LinkEvent, events: NativeLinkEvents): void {
  switch (e.type) {
    case 'progress':
      if (e.toFd || e.toRing) events.progress(e.toFd, e.toRing);
      autotune(host.budget, host.config.max_ring_bytes, s, slot, e.toFd, e.toRing, e.stalls);
      return;
    case 'fdEof':
      events.hostEnded?.();
      return;
    case 'ringEof':
      events.clientEnded?.();
      return;
    case 'resized': {
      const delta = e.idle ? slot.size[e.dir] - e.ringSize : slot.growing[e.dir]; // idle: the pump's own shrink (native/SHM.md) gives bytes back
      if (e.idle) {
        slot.size[e.dir] = e.ringSize;
      } else {
        slot.growing[e.dir] = 0;
      }
      if (e.errno === 0 && !e.idle) {
        slot.size[e.dir] = e.ringSize;
        host.grows.add(1, { direction: e.dir === 0 ? 'c2g' : 'g2c' });
        trace(`session ${s.id}: slot ${slotNo} ${e.dir === 0 ? 'c2g' : 'g2c'} ring granted ${e.ringSize} bytes`);
      } else {
        s.charged -= delta;
        host.budget.uncharge(s.identity.name, delta);
      }
      return;
    }
    case 'end': {
      slot.linkEnded = true;
      slot.link = undefined;
      if (e.reason !== 'ok' && s.state === 'live' && !slot.released) {
        const code = slot.target?.error?.code ?? e.code ?? (e.reason === 'aborted' ? 'ERR_SOCKGATE_ABORTED' : e.reason);
        host.send(s, encodeCtl(CtlType.END, slotNo, Buffer.from(code, 'utf8')));
      }
      if (e.reason === 'error' || e.reason === 'corrupt') trace(`session ${s.id}: slot ${slotNo} link ended ${e.reason} ${e.code ?? ''}`);
      slot.target = undefined;
      if (slot.released) host.closeSlot(s, slotNo, slot);
      return;
    }
    default:
      return;
  }
}

