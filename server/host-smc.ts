/**
 * Kernel SMC as a kind of host socket. Where the kernel has SMC, host stream
 * sockets toward destinations a rule marks `smc: prefer` are opened as SMC
 * (AF_SMC, or IPPROTO_SMC on kernels that have it), and the tcp data port can
 * listen on an SMC socket (`smc.data_port`), so two gateways on SMC hosts talk
 * SMC-R without sockgate's own verbs code. SMC is not negotiated with clients:
 * the kernel decides SMC-R, SMC-D or a fallback to TCP inside the socket, and
 * SMC_DIAG tells which, with the kernel's reason code; status, GetInfo and the
 * `sockgate.smc_sockets` metric show it (like smcss).
 *
 * The native addon is loaded lazily: without it, or without SMC in the
 * kernel, `available` is false with the reason and marked rules open plain TCP
 * (a fallback like any other, counted with reason "unavailable").
 */
import { isIP, type Socket as NetSocket } from 'node:net';
import type { Counter, Meter } from '@opentelemetry/api';
import type { Logger } from '../native/log.js';
import type { SmcConfig } from './config-smc.js';
import type { HostSocket } from '../proto/gen/sockgate/v1/sockgate.js';

type SmcModule = typeof import('../native/smc.js');
type DiagMap = ReturnType<SmcModule['smcDiagByInode']>;

/** Each SMC socket's inode, taken while its descriptor is open (the diag dump names sockets by inode). */
const smcInodes = new WeakMap<object, number>();

/** Whether `sock` is a host socket this gateway opened or accepted as kernel SMC. */
export function isSmcSocket(sock: object): boolean {
  return smcInodes.has(sock);
}

export class HostSmc {
  #mod: SmcModule | undefined;
  #reason = 'not started';
  #dump: { at: number; map: DiagMap } | undefined;
  #diagError = '';
  readonly #sockets: Counter | undefined;

  constructor(
    private readonly config: SmcConfig,
    private readonly logger: Logger,
    meter?: Meter,
  ) {
    this.#sockets = meter?.createCounter('sockgate.smc_sockets', {
      description: 'Host sockets opened as kernel SMC, by the mode the kernel chose (SMC-R, SMC-D, fallback) and its fallback reason',
      unit: '{socket}',
    });
  }

  get available(): boolean {
    return this.#mod !== undefined;
  }

  /** Why SMC sockets cannot be made here ('' when they can). */
  get reason(): string {
    return this.#mod ? '' : this.#reason;
  }

  /** Load the addon's SMC part and apply the configured UEIDs / PNET ids. Throws only when those were asked for and fail. */
  async start(): Promise<void> {
    try {
      const mod = await import('../native/smc.js');
      if (mod.smcSupport.available) this.#mod = mod;
      else this.#reason = mod.smcSupport.reason;
    } catch (err) {
      this.#reason = `the native addon did not load (${(err as Error).message})`;
    }
    const wantsKernelConfig = this.config.ueids.length > 0 || this.config.pnets.length > 0;
    if (!wantsKernelConfig) return;
    if (!this.#mod) throw new Error(`config smc.ueids/smc.pnets: kernel SMC is unavailable: ${this.#reason}`);
    try {
      this.#mod.configureSmc({ ueids: this.config.ueids, pnets: this.config.pnets });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const hint = code === 'EPERM' ? ' (needs CAP_NET_ADMIN: see deploy/sockgate.service and the DaemonSet)' : '';
      throw new Error(`config smc.ueids/smc.pnets: ${(err as Error).message}${hint}`, { cause: err });
    }
    this.logger.info({ ueids: this.config.ueids, pnets: this.config.pnets.map((p) => p.id) }, 'kernel SMC: UEIDs and PNET ids applied');
  }

  /** Open an SMC connection (paused, half-open allowed); the kernel falls back to TCP by itself when SMC cannot be used. */
  async connect(family: 4 | 6, address: string, port: number, timeoutMs: number, highWaterMark: number): Promise<NetSocket> {
    const mod = this.#mod!;
    const sock = await mod.smcConnect(family, address, port, timeoutMs, highWaterMark);
    this.track(sock, (sock as unknown as { _handle?: { fd?: number } })._handle?.fd ?? -1, 'connect');
    return sock;
  }

  /** A listening SMC descriptor for the data port (net.Server.listen({ fd })). */
  listenFd(host: string, port: number, backlog: number): number {
    if (!this.#mod) throw new Error(`kernel SMC is unavailable: ${this.#reason}`);
    const family = isIP(host);
    if (family === 0) throw new Error(`an SMC listener needs an IP address, not ${JSON.stringify(host)}`);
    return this.#mod.smcListen(family as 4 | 6, host, port, backlog, false).fd;
  }

  /**
   * Mark an accepted or listening socket as SMC (its inode is read now, while
   * the descriptor is open). An accepted one (`side` given) is counted in the
   * metric with the mode the kernel chose: its CLC handshake ended before accept.
   */
  track(handleOwner: object, fd: number, side?: string): void {
    if (!this.#mod || fd < 0) return;
    smcInodes.set(handleOwner, this.#mod.inodeOfFd(fd));
    if (side) this.#count(this.describe(handleOwner, true), side);
  }

  #count(info: HostSocket, side: string): void {
    const reason = info.smcFallbackReason ? `0x${info.smcFallbackReason.toString(16).padStart(8, '0')}` : '';
    this.#sockets?.add(1, { side, mode: info.smcMode, reason });
    this.logger.debug({ side, smc: info.detail }, 'kernel SMC socket');
  }

  /** Whether `sock` was opened as SMC by this module. */
  isSmc(sock: object): boolean {
    return isSmcSocket(sock);
  }

  /** The kernel's view of one socket: tcp, or smc with its mode or fallback reason (one dump per diag_cache_ms). */
  describe(sock: object, fresh = false): HostSocket {
    const inode = smcInodes.get(sock);
    if (inode === undefined || !this.#mod) return { proto: 'tcp', smcMode: '', smcFallbackReason: 0, smcPeerDiagnosis: 0, detail: '' };
    const map = this.#diag(fresh);
    if (!map) return { proto: 'smc', smcMode: 'unknown', smcFallbackReason: 0, smcPeerDiagnosis: 0, detail: `smc (diag: ${this.#diagError})` };
    const i = this.#mod.smcInfoOf(inode, map);
    return { proto: 'smc', smcMode: i.mode, smcFallbackReason: i.fallbackReason, smcPeerDiagnosis: i.peerDiagnosis, detail: i.text };
  }

  #diag(fresh: boolean): DiagMap | undefined {
    const now = Date.now();
    if (!fresh && this.#dump && now - this.#dump.at <= this.config.diag_cache_ms) return this.#dump.map;
    try {
      this.#dump = { at: now, map: this.#mod!.smcDiagByInode() };
      return this.#dump.map;
    } catch (err) {
      this.#diagError = (err as Error).message;
      return undefined;
    }
  }
}
