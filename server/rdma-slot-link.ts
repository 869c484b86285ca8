/**
 * A linked rdma slot as a socket's NativeLink (server/transport-rdma.ts): the
 * slot is linked to the host descriptor on the session's connection, tracked
 * for live failover, and closed, half-closed or tuned through the connection;
 * once the socket moved (server/rdma-resume.ts, server/rdma-move.ts) every
 * call goes to the link it continues on.
 */
import type { HostSockopt, RdmaLinkResume } from '../native/index.js';
import type { Logger } from '../native/log.js';
import { SocketClosedError } from '../proto/errors.js';
import { applyHostOption } from './host-option.js';
import { newSlotLink, type RdmaSession, type RdmaSlot, type SlotLink } from './rdma-sessions.js';
import type { failoverHooks } from './rdma-resume.js';
import { END_WAIT_MS } from './slot-session.js';
import type { HostOption, NativeLink, NativeLinkEnd, NativeLinkEvents } from './transport.js';

export interface SlotLinkDeps {
  native: typeof import('../native/index.js');
  logger: Logger;
  failover: ReturnType<typeof failoverHooks>;
}

/** Link slot `slot` of `s` to `fd` (owned from here, closed on failure); with `resume`, a moved socket's slot. */
export function startSlotLink(d: SlotLinkDeps, s: RdmaSession, slot: RdmaSlot, fd: number, events: NativeLinkEvents, resume?: RdmaLinkResume): NativeLink {
  const native = d.native;
  const conn = s.conn;
  if (s.state !== 'live' || !conn) {
    native.closeFd(fd);
    throw new SocketClosedError(`rdma session ${s.id} is not connected`);
  }
  try {
    conn.link(slot.no, fd, undefined, resume);
  } catch (err) {
    native.closeFd(fd);
    throw native.translateError(err);
  }
  slot.state = 'open';
  const link = newSlotLink(events);
  slot.link = link;
  d.failover.track(s, slot, link);
  const call = <T>(fn: () => T): T => {
    try {
      return fn();
    } catch (err) {
      throw native.translateError(err);
    }
  };
  return {
    ended: link.ended,
    close: () => (link.suspended ? d.failover.close(link) : abortSlot(d, s, slot, link)),
    shutdownHost: (read: boolean, write: boolean) => {
      if (link.moved) return link.moved.shutdownHost(read, write);
      if (link.settled) throw new SocketClosedError(`the rdma link of slot ${slot.no} has ended`);
      call(() => conn.shutdownSlot(slot.no, read, write));
    },
    setHostOption: (o: HostOption) =>
      link.moved
        ? link.moved.setHostOption(o)
        : applyHostOption(
            {
              setHostSockopt: (name: HostSockopt, value: number) => {
                const level = name.startsWith('TCP_') ? native.constants.IPPROTO_TCP : native.constants.SOL_SOCKET;
                if (link.settled || !call(() => conn.setSlotSockopt(slot.no, level, native.constants[name], value))) {
                  throw new SocketClosedError(`the rdma link of slot ${slot.no} has no descriptor`);
                }
              },
            },
            o,
            (err) => err instanceof SocketClosedError,
          ),
  };
}

/** NativeLink.close(): abort the slot (RST to the host, CLOSE to the client); resolves on its slotEnd. */
function abortSlot(d: SlotLinkDeps, s: RdmaSession, slot: RdmaSlot, link: SlotLink): Promise<NativeLinkEnd> {
  if (link.settled || link.closing) return link.ended;
  link.closing = true;
  try {
    if (!s.conn || s.state !== 'live') throw new Error('not connected');
    s.conn.closeSlot(slot.no, true);
  } catch {
    link.settle({ reason: 'aborted', errno: 0 });
    return link.ended;
  }
  const timer = setTimeout(() => {
    if (link.settled) return;
    d.logger.warn({ session: s.id, slot: slot.no }, `rdma: no slotEnd ${END_WAIT_MS} ms after closing the slot`);
    link.settle({ reason: 'aborted', errno: 0 });
  }, END_WAIT_MS);
  timer.unref();
  void link.ended.then(() => clearTimeout(timer));
  return link.ended;
}
