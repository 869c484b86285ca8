/**
 * A test stand-in for a VMM's vsock device in its Unix-socket form, as
 * Firecracker and Cloud Hypervisor implement it:
 * - guest → host port P: the VMM connects to `<udsPath>_P` on the host. The
 *   stand-in plays the guest: guestConnect(P) opens that connection, and
 *   guestPort(P) exposes it as a Unix socket a "guest app" (the SDK in a test)
 *   can dial, each connection relayed to `<udsPath>_P`.
 * - host → guest port P: a host process connects to `<udsPath>`, writes
 *   `CONNECT P\n`, reads `OK <host_port>\n`, then talks to the guest's listener.
 *   The stand-in listens on `<udsPath>` and hands such connections to the
 *   handler registered by guestListen(P); with none, it closes the connection
 *   without a reply, as the VMMs do.
 */
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The first host-side port number the stand-in reports in `OK <n>` (Firecracker counts up from 1 << 30). */
const FIRST_HOST_PORT = 1 << 30;
/** Longest `CONNECT <port>\n` line accepted. */
const MAX_LINE_BYTES = 32;

export interface VmmStandin {
  /** The VMM's `uds_path` (give the gateway `vsock_uds.path` = this). */
  readonly udsPath: string;
  /** A directory for the test's own sockets; removed by close(). */
  readonly dir: string;
  /** As the guest: connect to host vsock port `port` (a connection to `<udsPath>_<port>`). */
  guestConnect(port: number): Promise<Socket>;
  /** A Unix socket path inside `dir` whose connections are relayed to host vsock port `port`, as a guest app's would be. */
  guestPort(port: number): Promise<string>;
  /** As the guest: listen on vsock port `port`; host connections through `<udsPath>` + `CONNECT port` reach `onConnection`. */
  guestListen(port: number, onConnection: (sock: Socket) => void): void;
  /** `CONNECT` requests seen, with the port each asked for and whether a listener took it. */
  readonly connects: { port: number; accepted: boolean }[];
  close(): Promise<void>;
}

/** Start a stand-in with its `uds_path` in a fresh temporary directory, or at `opts.udsPath` (several VMMs in one directory). */
export async function startVmmStandin(opts: { udsPath?: string } = {}): Promise<VmmStandin> {
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-vmm-'));
  const udsPath = opts.udsPath ?? join(dir, 'v.sock');
  const listeners = new Map<number, (sock: Socket) => void>();
  const sockets = new Set<Socket>();
  const servers: Server[] = [];
  const connects: { port: number; accepted: boolean }[] = [];
  let nextHostPort = FIRST_HOST_PORT;
  const track = (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
  };

  // host → guest: <udsPath> with "CONNECT <port>\n".
  const hostSide = createServer({ allowHalfOpen: true }, (sock) => {
    track(sock);
    let line = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      line = Buffer.concat([line, chunk]);
      const nl = line.indexOf(0x0a);
      if (nl < 0) {
        if (line.length > MAX_LINE_BYTES) sock.destroy();
        return;
      }
      sock.removeListener('data', onData);
      sock.pause();
      const m = /^CONNECT ([0-9]{1,10})$/.exec(line.subarray(0, nl).toString('latin1'));
      const port = m ? Number(m[1]) : -1;
      const handler = listeners.get(port);
      connects.push({ port, accepted: !!handler });
      if (!handler) {
        sock.destroy();
        return;
      }
      sock.write(`OK ${nextHostPort++}\n`);
      const rest = line.subarray(nl + 1);
      if (rest.length) sock.unshift(rest);
      handler(sock);
    };
    sock.on('data', onData);
  });
  hostSide.listen(udsPath);
  await once(hostSide, 'listening');
  servers.push(hostSide);

  const guestConnect = (port: number): Promise<Socket> =>
    new Promise((resolve, reject) => {
      const s = netConnect({ path: `${udsPath}_${port}`, allowHalfOpen: true });
      s.once('connect', () => {
        s.removeListener('error', reject);
        track(s);
        resolve(s);
      });
      s.once('error', reject);
    });

  return {
    udsPath,
    dir,
    connects,
    guestConnect,
    async guestPort(port: number): Promise<string> {
      const path = join(dir, `guest-vsock-${port}.sock`);
      const server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (app) => {
        track(app);
        guestConnect(port).then(
          (host) => {
            // Relay both ways with half-close; an abort on one side aborts the other, as the VMM resets the vsock connection.
            app.pipe(host);
            host.pipe(app);
            const clean = (x: Socket) => x.readableEnded && x.writableFinished;
            app.on('close', () => {
              if (!clean(app)) host.destroy();
            });
            host.on('close', () => {
              if (!clean(host)) app.destroy();
            });
          },
          // Nothing listens on <udsPath>_<port>: the VMM resets the guest's connection.
          () => app.destroy(),
        );
      });
      server.listen(path);
      await once(server, 'listening');
      servers.push(server);
      return path;
    },
    guestListen(port, onConnection) {
      listeners.set(port, onConnection);
    },
    async close() {
      for (const s of sockets) s.destroy();
      await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
