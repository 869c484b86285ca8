/**
 * An shm session's control slot (slot 0): pumped into a socketpair read here,
 * it carries the client's BIND, RELEASE and ABORT and the gateway's BOUND and
 * END messages (formats in proto/shm-wire.ts).
 */
import { Socket } from 'node:net';
import type { PumpLink } from '../native/index.js';
import type { PumpHub } from '../native/pump-hub.js';
import { CONTROL_SLOT, CtlParser, CtlType } from '../proto/shm-wire.js';
import type { Config } from './config.js';
import type { Session } from './shm-session.js';

/** A client that leaves this much of its control stream unread is not reading it: its session ends. */
const CONTROL_BACKLOG_LIMIT = 64 * 1024;

/** What the control slot needs of the transport that owns the session. */
export interface ControlHost {
  readonly native: typeof import('../native/index.js');
  readonly hub: PumpHub;
  readonly config: Config['transports']['shm'];
  refuse(reason: 'protocol', detail: string, extra: Record<string, unknown>): void;
  endSession(s: Session, why: string, level: 'warn' | 'error'): Promise<void>;
  bind(s: Session, slotNo: number, token: Buffer): void;
  release(s: Session, slotNo: number, abort: boolean): void;
}

/** Pump the control slot into a socketpair read here. */
export function startControl(host: ControlHost, s: Session): void {
  const native = host.native;
  const [a, b] = native.socketpair();
  let link: PumpLink;
  try {
    link = host.hub.pump.link(s.region!, CONTROL_SLOT, a);
  } catch (err) {
    native.closeFd(a);
    native.closeFd(b);
    throw err;
  }
  s.ctlLink = link;
  host.hub.onLink(link.id, (ev) => {
    if (ev.type === 'progress') s.ctlDelivered += ev.toRing;
    if (ev.type === 'end' && s.state === 'live') {
      const why = `its control stream ended (${ev.reason}${ev.code ? `, ${ev.code}` : ''})`;
      void host.endSession(s, why, ev.reason === 'corrupt' ? 'error' : 'warn');
    }
  });
  const sock = new Socket({ fd: b, readable: true, writable: true, allowHalfOpen: true });
  s.ctlSock = sock;
  const parser = new CtlParser(new Set([CtlType.BIND, CtlType.RELEASE, CtlType.ABORT]), host.config.slots_per_session);
  sock.on('data', (chunk: Buffer) => {
    if (s.state !== 'live') return;
    let msgs;
    try {
      msgs = parser.push(chunk);
    } catch (err) {
      host.refuse('protocol', (err as Error).message, { session: s.id, peerPid: s.peer.pid });
      void host.endSession(s, (err as Error).message, 'warn');
      return;
    }
    for (const m of msgs) {
      if (s.state !== 'live') return;
      if (m.type === CtlType.BIND) host.bind(s, m.slot, m.payload);
      else host.release(s, m.slot, m.type === CtlType.ABORT);
    }
  });
  sock.on('error', () => {});
}

/** Queue a control message to the client; a client that leaves too much unread loses its session. */
export function sendCtl(host: ControlHost, s: Session, msg: Buffer): void {
  const sock = s.ctlSock;
  if (!sock || sock.destroyed || s.state !== 'live') return;
  if (sock.writableLength > CONTROL_BACKLOG_LIMIT) {
    void host.endSession(s, 'the client does not read its control slot', 'warn');
    return;
  }
  s.ctlWritten += msg.length;
  sock.write(msg);
}
