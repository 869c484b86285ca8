/**
 * Kernel SMC as host sockets: the addon creates the AF_SMC (or IPPROTO_SMC)
 * socket, Node wraps the descriptor as TCP (an SMC socket answers getsockname
 * with its internal TCP socket's address family, so libuv takes it for one),
 * and SMC_DIAG tells what the kernel made of it: SMC-R, SMC-D, or a fallback
 * to TCP with the kernel's reason code (what `smcss` shows).
 */
import { fstatSync } from 'node:fs';
import { Socket } from 'node:net';
import { binding } from './load-addon.js';
import type { RawSmc } from './binding-types.js';
import { describeSmcReason, parseSmcDiag, type SmcDiagEntry } from './smc-diag.js';

export { describeSmcReason, parseSmcDiag, type SmcDiagEntry, type SmcMode } from './smc-diag.js';

const raw: RawSmc = binding.smc;

/** Whether this kernel can create SMC sockets, and why not. */
export const smcSupport: { readonly available: boolean; readonly reason: string } = { available: raw.available, reason: raw.reason };

/** What status shows for one socket: kernel protocol and, for smc, the mode or the fallback reason. */
export interface SmcSocketInfo {
  /** 'smc' for a socket the addon made as SMC (whatever the kernel then did). */
  proto: 'smc';
  mode: SmcDiagEntry['mode'] | 'unknown';
  /** SMC_CLC_DECL_* when mode is 'fallback'. */
  fallbackReason: number;
  peerDiagnosis: number;
  /** e.g. "SMC-R rxe0", "fallback 0x03030000 no SMC device found". */
  text: string;
}

/** Opens an SMC connection; resolves with a paused net.Socket over it (half-open allowed). */
export async function smcConnect(family: 4 | 6, address: string, port: number, timeoutMs: number, highWaterMark?: number): Promise<Socket> {
  const { fd } = await raw.connect(family, address, port, timeoutMs);
  const sock = new Socket({ fd, allowHalfOpen: true, readable: true, writable: true, ...(highWaterMark ? { highWaterMark } : {}) } as ConstructorParameters<typeof Socket>[0]);
  sock.pause();
  return sock;
}

/** A listening SMC socket's descriptor, for net.Server.listen({ fd }). */
export function smcListen(family: 4 | 6, address: string, port: number, backlog: number, v6only: boolean): { fd: number; port: number } {
  const { fd, port: bound } = raw.listen(family, address, port, backlog, v6only);
  return { fd, port: bound };
}

/** Every SMC socket of this host by inode (one netlink dump). Throws when smc_diag is missing. */
export function smcDiagByInode(): Map<number, SmcDiagEntry> {
  const map = new Map<number, SmcDiagEntry>();
  for (const e of parseSmcDiag(raw.diagDump())) map.set(e.inode, e);
  return map;
}

/** The socket inode of a descriptor (what SMC_DIAG reports as diag_inode). */
export function inodeOfFd(fd: number): number {
  return fstatSync(fd).ino;
}

/** Status of one SMC socket from a dump (`unknown` when it is no longer in the kernel's table). */
export function smcInfoOf(inode: number, dump: Map<number, SmcDiagEntry>): SmcSocketInfo {
  const e = dump.get(inode);
  if (!e) return { proto: 'smc', mode: 'unknown', fallbackReason: 0, peerDiagnosis: 0, text: 'smc (not in smc_diag)' };
  let text: string = e.mode;
  if (e.mode === 'fallback') {
    text = `fallback ${describeSmcReason(e.fallbackReason)}`;
    if (e.peerDiagnosis) text += ` (peer: ${describeSmcReason(e.peerDiagnosis)})`;
  } else if (e.mode === 'SMC-R' && e.ibDevice) {
    text = `SMC-R ${e.ibDevice}`;
  }
  return { proto: 'smc', mode: e.mode, fallbackReason: e.fallbackReason, peerDiagnosis: e.peerDiagnosis, text };
}

/** UEID and PNET entries applied at gateway start (generic netlink; needs CAP_NET_ADMIN). */
export interface SmcKernelConfig {
  ueids: readonly string[];
  pnets: readonly { id: string; eth?: string | undefined; ib?: string | undefined; ib_port: number }[];
}

/** Apply UEIDs and PNET ids; an entry that is already there is fine (EEXIST). */
export function configureSmc(cfg: SmcKernelConfig): void {
  const tolerate = (fn: () => void) => {
    try {
      fn();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  };
  for (const u of cfg.ueids) tolerate(() => raw.addUeid(u));
  for (const p of cfg.pnets) tolerate(() => raw.addPnet(p.id, p.eth ?? '', p.ib ?? '', p.ib_port));
}
