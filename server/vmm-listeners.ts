/**
 * Many Firecracker / Cloud Hypervisor VMs through one gateway (`vsock_uds`).
 * Each VMM has a vsock `uds_path`; its guest's connection to host port P
 * arrives on `<uds_path>_P`, so per VM the gateway listens on
 * `<uds_path>_<control_port>` (control plane, injected into grpc-js with the
 * VM as the peer: control-listeners.ts) and `<uds_path>_<data_port>` (the
 * tcp data plane, whose attaches are held to the VM's own sockets).
 *
 * VMs come from the configuration (`path`, `vms`) and from a watched
 * directory (`watch`): a VMM socket appearing there adds its VM, its removal
 * removes it, without a restart. The directory is rescanned on every change
 * event (inotify through fs.watch), so a burst of events is one scan.
 */
import { existsSync, lstatSync, readdirSync, statSync, unlinkSync, watch, type FSWatcher } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { InvalidArgumentError } from '../proto/errors.js';
import type { Logger } from '../native/log.js';
import type { Config } from './config.js';
import type { ControlListenerHandle, ControlListeners } from './control-listeners.js';
import type { GatewaySocket } from './socket-table.js';
import { removeStaleSocket, type TcpTransport } from './transport-tcp.js';
import { normalizeVmmPath } from './vm-identity.js';

/** Change events within this long are one rescan (a VMM creating its socket fires several). */
const RESCAN_DEBOUNCE_MS = 50;

export type VsockUdsConfig = NonNullable<Config['vsock_uds']>;

/** The VMM's Unix socket for guest connections to host vsock port `port` (Firecracker / Cloud Hypervisor). */
export function vsockUdsPath(path: string, port: number): string {
  return `${path}_${port}`;
}

export interface VmmListenersOptions {
  config: VsockUdsConfig;
  control: ControlListeners;
  tcp: TcpTransport;
  /** The identity a VMM socket's guests are (policy), or undefined. */
  identityOf: (vmmPath: string) => string | undefined;
  logger: Logger;
}

/** One VM being served. */
export interface ServedVm {
  /** The VMM's `uds_path` (normalized). */
  readonly path: string;
  readonly identity: string | undefined;
  /** `<path>_<control_port>` and `<path>_<data_port>`. */
  readonly control: string;
  readonly data: string;
  /** From the watched directory (removed with its socket) rather than the configuration. */
  readonly watched: boolean;
}

interface Vm extends ServedVm {
  controlListener: ControlListenerHandle;
  dataServer: Server;
}

export class VmmListeners {
  private readonly vms = new Map<string, Vm>();
  private watcher: FSWatcher | undefined;
  private rescanTimer: NodeJS.Timeout | undefined;
  /** Scans run one at a time; a change during one schedules another. */
  private scanning: Promise<void> = Promise.resolve();
  private closed = false;
  /** VMs refused by max_vms, by path: logged once each. */
  private readonly overLimit = new Set<string>();

  constructor(private readonly o: VmmListenersOptions) {}

  /** Serve the configured VMs and start watching the directory. */
  async start(): Promise<void> {
    const c = this.o.config;
    const paths = [...(c.path ? [c.path] : []), ...c.vms.map((v) => v.path)];
    for (const p of paths) await this.add(p, false);
    if (c.watch) {
      const dir = c.watch.dir;
      if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new InvalidArgumentError(`vsock_uds.watch.dir: ${dir} is not a directory`);
      this.watcher = watch(dir, { persistent: false }, () => this.scheduleRescan());
      this.watcher.on('error', (err) => this.o.logger.error({ err: err.message, dir }, 'vsock_uds.watch.dir: watch failed; VMs are no longer added or removed'));
      await this.rescan();
    }
  }

  /** The VMs served now. */
  list(): ServedVm[] {
    return [...this.vms.values()].map(({ path, identity, control, data, watched }) => ({ path, identity, control, data, watched }));
  }

  /** Resolves once the directory has been scanned after every change seen so far (tests). */
  async settled(): Promise<void> {
    if (this.rescanTimer) {
      clearTimeout(this.rescanTimer);
      this.rescanTimer = undefined;
      await this.rescan();
    }
    await this.scanning;
  }

  private scheduleRescan(): void {
    if (this.closed || this.rescanTimer) return;
    this.rescanTimer = setTimeout(() => {
      this.rescanTimer = undefined;
      void this.rescan();
    }, RESCAN_DEBOUNCE_MS);
    this.rescanTimer.unref();
  }

  /** Bring the watched VMs in line with the VMM sockets in the directory. */
  private rescan(): Promise<void> {
    this.scanning = this.scanning.then(() => this.scanOnce()).catch((err: Error) => this.o.logger.error({ err: err.message }, 'vsock_uds.watch.dir: scan failed'));
    return this.scanning;
  }

  private async scanOnce(): Promise<void> {
    const w = this.o.config.watch;
    if (!w || this.closed) return;
    const present = new Set<string>();
    for (const name of readdirSync(w.dir)) {
      if (!name.endsWith(w.suffix)) continue;
      const p = normalizeVmmPath(join(w.dir, name));
      try {
        if (lstatSync(p).isSocket()) present.add(p);
      } catch {
        // gone between readdir and lstat: absent
      }
    }
    for (const vm of [...this.vms.values()]) if (vm.watched && !present.has(vm.path)) this.remove(vm.path);
    for (const p of present) if (!this.vms.has(p)) await this.add(p, true);
    for (const p of this.overLimit) if (!present.has(p)) this.overLimit.delete(p);
  }

  private async add(rawPath: string, watched: boolean): Promise<void> {
    const path = normalizeVmmPath(rawPath);
    if (this.vms.has(path) || this.closed) return;
    if (this.vms.size >= this.o.config.max_vms) {
      if (!this.overLimit.has(path)) this.o.logger.warn({ vmm: path, max: this.o.config.max_vms }, 'VM not served: vsock_uds.max_vms reached');
      this.overLimit.add(path);
      return;
    }
    const c = this.o.config;
    const control = vsockUdsPath(path, c.control_port);
    const data = vsockUdsPath(path, c.data_port);
    const identity = this.o.identityOf(path);
    removeStaleSocket(control);
    removeStaleSocket(data);
    const controlListener = await this.o.control.listenVmm(control, path);
    let dataServer: Server;
    try {
      dataServer = await this.listenData(data, path, identity);
    } catch (err) {
      controlListener.close();
      unlinkQuietly(control);
      throw err;
    }
    this.vms.set(path, { path, identity, control, data, watched, controlListener, dataServer });
    this.o.logger.info({ vmm: path, identity: identity ?? null, control, data }, 'VM added');
  }

  private async listenData(socketPath: string, vmmPath: string, identity: string | undefined): Promise<Server> {
    const server = createServer({ allowHalfOpen: true }, (sock) => {
      this.o.tcp.handleConnection(sock, {
        peerKey: `vmm:${vmmPath}`,
        // A VM attaches only its own identity's sockets, whoever's token it holds.
        mayAttach: (target: GatewaySocket) =>
          identity !== undefined && target.identity.name !== identity ? `the token is for another identity's socket, not VM ${vmmPath}'s (${identity})` : undefined,
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ path: socketPath }, () => {
        server.removeListener('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.o.logger.error({ err: err.message, path: socketPath }, 'vsock data socket error'));
    return server;
  }

  /** Stop serving a VM: its listeners close, its sockets' files go, its open control connections are closed. */
  remove(rawPath: string): void {
    const path = normalizeVmmPath(rawPath);
    const vm = this.vms.get(path);
    if (!vm) return;
    this.vms.delete(path);
    vm.controlListener.close();
    vm.dataServer.close();
    // Attached data connections belong to their sockets; those still in their preamble end by its timeout.
    unlinkQuietly(vm.control);
    unlinkQuietly(vm.data);
    this.o.logger.info({ vmm: path }, 'VM removed');
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.rescanTimer);
    this.watcher?.close();
    for (const p of [...this.vms.keys()]) this.remove(p);
  }
}

function unlinkQuietly(p: string): void {
  try {
    if (lstatSync(p).isSocket()) unlinkSync(p);
  } catch {
    // already gone
  }
}
