/**
 * Parser of the kernel's SMC_DIAG dump (NETLINK_SOCK_DIAG, family AF_SMC):
 * the raw netlink messages native/src/smc_netlink.cc returns, one
 * `smc_diag_msg` each (include/uapi/linux/smc_diag.h) with its attributes.
 * Only what status needs is read: state, mode, inode, the fallback reason and
 * the peer's diagnosis, and the 4-tuple of the internal TCP socket.
 */

/** Netlink header: len u32, type u16, flags u16, seq u32, pid u32. */
const NLMSG_HDRLEN = 16;
const NLMSG_DONE = 3;
const NLMSG_ERROR = 2;
/** struct smc_diag_msg: family, state, mode, shutdown, inet_diag_sockid (48), uid u32, inode u64 (aligned). */
const SMC_DIAG_MSG_LEN = 64;
/** SMC_DIAG_FALLBACK: struct smc_diag_fallback { u32 reason; u32 peer_diagnosis; }. */
const SMC_DIAG_FALLBACK = 5;
/** SMC_DIAG_LGRINFO: link info; ibname at offset 1 (IB_DEVICE_NAME_MAX = 64 bytes). */
const SMC_DIAG_LGRINFO = 2;
const IB_DEVICE_NAME_MAX = 64;
/** diag_mode values (smc_diag.h). */
const MODE_SMCR = 0;
const MODE_FALLBACK = 1;
const MODE_SMCD = 2;
/** sk_state of a listening SMC socket (SMC_LISTEN in net/smc/smc.h): its diag_mode says nothing. */
const SMC_LISTEN = 10;
/** SMC_INIT: created, not yet connected. */
const SMC_INIT = 2;

export type SmcMode = 'SMC-R' | 'SMC-D' | 'fallback' | 'listening' | 'connecting';

export interface SmcDiagEntry {
  inode: number;
  state: number;
  mode: SmcMode;
  /** The kernel's fallback reason (SMC_CLC_DECL_*), 0 when not fallen back. */
  fallbackReason: number;
  /** What the peer said when it declined (its SMC_CLC_DECL_* code), 0 when none. */
  peerDiagnosis: number;
  /** The RDMA device of an SMC-R link ('' otherwise). */
  ibDevice: string;
  family: number;
  localPort: number;
  remotePort: number;
}

/** Parse a dump; throws on a malformed message (length out of bounds) rather than guess. */
export function parseSmcDiag(buf: Uint8Array): SmcDiagEntry[] {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: SmcDiagEntry[] = [];
  let off = 0;
  while (off + NLMSG_HDRLEN <= buf.byteLength) {
    const len = view.getUint32(off, true);
    const type = view.getUint16(off + 4, true);
    if (len < NLMSG_HDRLEN || off + len > buf.byteLength) throw new Error(`smc diag: netlink message at ${off} has length ${len} (buffer ${buf.byteLength})`);
    if (type === NLMSG_DONE || type === NLMSG_ERROR) break;
    const body = off + NLMSG_HDRLEN;
    if (len - NLMSG_HDRLEN < SMC_DIAG_MSG_LEN) throw new Error(`smc diag: message at ${off} too short for smc_diag_msg (${len})`);
    const state = view.getUint8(body + 1);
    const rawMode = view.getUint8(body + 2);
    const entry: SmcDiagEntry = {
      family: view.getUint8(body),
      state,
      mode: modeOf(state, rawMode),
      localPort: view.getUint16(body + 4, false),
      remotePort: view.getUint16(body + 6, false),
      inode: Number(view.getBigUint64(body + 56, true)),
      fallbackReason: 0,
      peerDiagnosis: 0,
      ibDevice: '',
    };
    let a = body + SMC_DIAG_MSG_LEN;
    const end = off + len;
    while (a + 4 <= end) {
      const alen = view.getUint16(a, true);
      const atype = view.getUint16(a + 2, true) & 0x3fff;
      if (alen < 4 || a + alen > end) throw new Error(`smc diag: attribute at ${a} has length ${alen}`);
      if (atype === SMC_DIAG_FALLBACK && alen >= 12) {
        entry.fallbackReason = view.getUint32(a + 4, true);
        entry.peerDiagnosis = view.getUint32(a + 8, true);
      } else if (atype === SMC_DIAG_LGRINFO && alen >= 4 + 1 + IB_DEVICE_NAME_MAX) {
        const name = buf.subarray(a + 5, a + 5 + IB_DEVICE_NAME_MAX);
        const nul = name.indexOf(0);
        entry.ibDevice = Buffer.from(name.subarray(0, nul < 0 ? name.length : nul)).toString('latin1');
      }
      a += (alen + 3) & ~3;
    }
    out.push(entry);
    off += (len + 3) & ~3;
  }
  return out;
}

function modeOf(state: number, raw: number): SmcMode {
  if (state === SMC_LISTEN) return 'listening';
  if (raw === MODE_FALLBACK) return 'fallback';
  if (raw === MODE_SMCD) return 'SMC-D';
  if (state === SMC_INIT) return 'connecting';
  return raw === MODE_SMCR ? 'SMC-R' : 'fallback';
}

/** Kernel fallback reasons (SMC_CLC_DECL_* in net/smc/smc_clc.h) that status names. */
const REASONS: Readonly<Record<number, string>> = {
  0x01010000: 'insufficient memory',
  0x02010000: 'timeout waiting for QP confirm link',
  0x02020000: 'timeout waiting for QP add link',
  0x03000000: 'configuration error',
  0x03010000: 'peer did not indicate SMC',
  0x03020000: 'IPsec in use',
  0x03030000: 'no SMC device found',
  0x03030001: 'no SMC-D device found',
  0x03030002: 'no SMC-R device found',
  0x03030003: 'no ISMv2 support',
  0x03030004: 'peer sent no CLC v2 extension',
  0x03030005: 'peer sent no SMC-Dv2 extension',
  0x03030006: 'peer sent no SEID',
  0x03030007: 'no SMC-Dv2 device found',
  0x03030008: 'peer sent no UEID',
  0x03040000: 'SMC modes do not match',
  0x03050000: 'peer has eyecatcher in RMBE',
  0x03060000: 'fastopen sockopt not supported',
  0x03070000: 'IP prefix / subnet mismatch',
  0x03080000: 'cannot get VLAN id',
  0x030a0000: 'no active SMC-R link',
  0x030b0000: 'SMC-R link from server not found',
  0x030c0000: 'SMC version mismatch',
  0x030e0000: 'SMC-Rv2: no route to peer',
  0x04000000: 'synchronization error',
  0x05000000: 'peer declined during handshake',
  0x09990000: 'internal error',
  0x09990001: 'rtoken handling failed',
  0x09990002: 'RDMA link not ready',
  0x09990003: 'registering RDMA buffers failed',
};

/** `0x03030000 no SMC device found`: the code in hex (as smcss prints it) and what it means. */
export function describeSmcReason(code: number): string {
  const hex = `0x${code.toString(16).padStart(8, '0')}`;
  const text = REASONS[code];
  return text ? `${hex} ${text}` : hex;
}
