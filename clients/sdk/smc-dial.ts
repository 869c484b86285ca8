/**
 * The tcp plane's data connection as kernel SMC (GatewayOptions.smc
 * 'prefer'): the addon creates the AF_SMC / IPPROTO_SMC socket and connects it
 * (native/smc.ts), Node wraps the descriptor. The kernel decides SMC-R, SMC-D
 * or a fallback to TCP inside the socket; SMC_DIAG tells which, with the
 * kernel's reason code (dataConnectionInfo). Where the addon or the kernel has
 * no SMC, the connection is dialed as plain TCP and the reason is traced
 * (SOCKGATE_TRACE=sdk) and reported, not raised: SMC is a preference.
 *
 * An SMC data connection is never spliced (transport-tcp.ts nativeBlocker):
 * splice(2) through an SMC-R socket corrupted data in the lab
 * (server/data-channel.ts NativeDataChannel.splices).
 */
import { lookup } from 'node:dns/promises';
import { isIP, type Socket } from 'node:net';
import { InvalidArgumentError } from '../../proto/errors.js';
import { isTracerEnabled, tracer } from '../../native/trace.js';

const trace = tracer('sdk');
/** The dial's trace line reads SMC_DIAG: only when someone reads the trace. */
const TRACING = isTracerEnabled('sdk');

/** GatewayOptions.smc: how the tcp plane's data connections are opened. */
export type SmcDial = 'off' | 'prefer';

/** How the kernel carries a tcp-plane data connection (the fields of the gateway's HostSocket). */
export interface DataConnectionInfo {
  /** 'smc' for a connection the addon made as SMC (whatever the kernel then did), else 'tcp'. */
  proto: 'tcp' | 'smc';
  /** For smc: 'SMC-R', 'SMC-D', 'fallback', 'connecting' or 'unknown' (not in SMC_DIAG, or smc_diag missing). */
  smcMode: string;
  /** For an smc fallback: the kernel's SMC_CLC_DECL_* reason, and the peer's own code when it declined. */
  smcFallbackReason: number;
  smcPeerDiagnosis: number;
  /** e.g. "SMC-R rxe0", "fallback 0x03030000 no SMC device found", or why a 'prefer' dial is plain tcp. */
  detail: string;
}

type SmcModule = typeof import('../../native/smc.js');

/** What is known of each data connection this module dialed: the SMC socket's inode, or why it is plain tcp. */
const dialed = new WeakMap<object, { inode: number } | { tcp: string }>();

let smcModule: Promise<SmcModule | string> | undefined;
/** The module once a dial found it usable (dataConnectionInfo is synchronous). */
let smcModuleSync: SmcModule | undefined;

/** native/smc.js, or why SMC sockets cannot be made here (loaded on the first 'prefer' dial). */
function loadSmc(): Promise<SmcModule | string> {
  smcModule ??= import('../../native/smc.js').then(
    (m) => {
      if (!m.smcSupport.available) return m.smcSupport.reason;
      smcModuleSync = m;
      return m;
    },
    (err: Error) => `the native addon did not load (${err.message})`,
  );
  return smcModule;
}

/** The validated `smc` option (throws InvalidArgumentError on anything but 'off' / 'prefer'). */
export function smcDialOf(options: { smc?: unknown }): SmcDial {
  const v = options.smc ?? 'off';
  if (v !== 'off' && v !== 'prefer') throw new InvalidArgumentError(`GatewayOptions.smc must be 'off' or 'prefer', not ${JSON.stringify(v)}`);
  return v;
}

/** Record that `sock` is a plain tcp data connection (`why`: the reason a 'prefer' dial is not SMC, '' for 'off'). */
export function markTcpDial(sock: object, why: string): void {
  dialed.set(sock, { tcp: why });
}

/**
 * Dial host:port as SMC (paused, noDelay, half-open allowed). Resolves with
 * a plain TCP connection made by `dialTcp` when SMC sockets cannot be made
 * here; rejects on a connect error (refused, timeout), as TCP would.
 */
export async function dialSmc(host: string, port: number, timeoutMs: number, highWaterMark: number, dialTcp: () => Socket): Promise<Socket> {
  const mod = await loadSmc();
  if (typeof mod === 'string') {
    trace(`smc: prefer: ${host}:${port} dialed as plain tcp: ${mod}`);
    const sock = dialTcp();
    markTcpDial(sock, `smc unavailable: ${mod}`);
    return sock;
  }
  let family = isIP(host);
  let address = host;
  if (family === 0) ({ address, family } = await lookup(host));
  const sock = await mod.smcConnect(family as 4 | 6, address, port, timeoutMs, highWaterMark);
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd ?? -1;
  // The inode is read now, while the descriptor is open: SMC_DIAG names sockets by inode (-1: reported 'unknown', still never spliced).
  dialed.set(sock, { inode: fd >= 0 ? mod.inodeOfFd(fd) : -1 });
  sock.setNoDelay(true);
  if (TRACING) trace(`smc: prefer: ${host}:${port} dialed as smc (${dataConnectionInfo(sock)?.detail ?? '?'})`);
  return sock;
}

/** Whether `sock` is a data connection this module opened as kernel SMC (never spliced). */
export function isSmcDataConnection(sock: object): boolean {
  const d = dialed.get(sock);
  return d !== undefined && 'inode' in d;
}

/**
 * How the kernel carries the data connection `sock` (one SMC_DIAG dump for an
 * smc one); undefined for one this module did not dial (vsock, grpc, shm, rdma).
 */
export function dataConnectionInfo(sock: object): DataConnectionInfo | undefined {
  const d = dialed.get(sock);
  if (!d) return undefined;
  if ('tcp' in d) return { proto: 'tcp', smcMode: '', smcFallbackReason: 0, smcPeerDiagnosis: 0, detail: d.tcp };
  // Only an smc entry exists, so the module loaded.
  const mod = smcModuleSync!;
  try {
    const i = mod.smcInfoOf(d.inode, mod.smcDiagByInode());
    return { proto: 'smc', smcMode: i.mode, smcFallbackReason: i.fallbackReason, smcPeerDiagnosis: i.peerDiagnosis, detail: i.text };
  } catch (err) {
    return { proto: 'smc', smcMode: 'unknown', smcFallbackReason: 0, smcPeerDiagnosis: 0, detail: `smc (diag: ${(err as Error).message})` };
  }
}
