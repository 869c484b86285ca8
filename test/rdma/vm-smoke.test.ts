/**
 * Smoke tests of the Soft-RoCE test VM itself (test/rdma/vm/): meant to run
 * INSIDE the guest, where `npm run test:rdma` runs them (SOCKGATE_IN_VM=1). On
 * the host they skip with a message; inside the VM nothing skips.
 *
 * Checks: the rxe device is there and active; rping and perftest (rdma_cm, CQ
 * events) work over it in one VM; AF_VSOCK works over vsock_loopback; AF_SMC
 * sockets work with the smc module.
 */
import test from 'ava';
import { execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';

const IN_VM = process.env['SOCKGATE_IN_VM'] === '1';
const ADDR = process.env['SOCKGATE_VM_ADDR'] || '10.99.0.1';
const DEV = process.env['SOCKGATE_VM_RDMA_DEV'] || 'rxe0';
/** Every child process is killed after this long (TCG is slow, but nothing here needs a minute). */
const CHILD_TIMEOUT_MS = 90_000;
/** Connect attempts while a server starts (with CONNECT_RETRY_MS between them). */
const CONNECT_ATTEMPTS = 20;
const CONNECT_RETRY_MS = 500;
/** The python in the host tree (pyenv shims would want a writable home). */
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

interface Ran {
  code: number | null;
  out: string;
}

function run(cmd: string, args: string[], timeoutMs = CHILD_TIMEOUT_MS): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : null) : 0;
      resolve({ code, out: `${stdout}${stderr}` });
    });
  });
}

/** Starts a one-shot server, then runs the client until it connects (bounded); returns both outputs. */
async function serverClient(server: [string, string[]], client: [string, string[]]): Promise<{ server: Ran; client: Ran }> {
  const child = spawn(server[0], server[1], { stdio: ['ignore', 'pipe', 'pipe'] });
  let sout = '';
  child.stdout.on('data', (d: Buffer) => (sout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (sout += d.toString()));
  const killer = setTimeout(() => child.kill('SIGKILL'), CHILD_TIMEOUT_MS);
  const sdone = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  let c: Ran = { code: null, out: '' };
  try {
    for (let i = 0; i < CONNECT_ATTEMPTS; i++) {
      await new Promise((r) => setTimeout(r, CONNECT_RETRY_MS));
      c = await run(client[0], client[1]);
      if (c.code === 0 || child.exitCode !== null) break;
    }
  } finally {
    // A server whose client never came would wait forever.
    if (c.code !== 0) child.kill('SIGKILL');
  }
  const scode = await sdone;
  clearTimeout(killer);
  return { server: { code: scode, out: sout }, client: c };
}

const PY_VSOCK_ECHO = `
import socket, sys, threading
port = int(sys.argv[1])
srv = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
srv.settimeout(30)
srv.bind((socket.VMADDR_CID_ANY, port))
srv.listen(1)
def serve():
    c, _ = srv.accept()
    c.settimeout(30)
    data = b''
    while True:
        b = c.recv(65536)
        if not b: break
        data += b
    c.sendall(data[::-1])
    c.close()
t = threading.Thread(target=serve); t.start()
cli = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
cli.settimeout(30)
cli.connect((1, port))  # VMADDR_CID_LOCAL: vsock_loopback
payload = bytes(range(256)) * 1024
cli.sendall(payload)
cli.shutdown(socket.SHUT_WR)
got = b''
while True:
    b = cli.recv(65536)
    if not b: break
    got += b
t.join(30)
print('AF_VSOCK echo via CID 1 port', port, 'sent', len(payload), 'got', len(got))
sys.exit(0 if got == payload[::-1] else 1)
`;

const PY_SMC_ECHO = `
import ctypes, os, socket, struct, sys, threading
AF_SMC = 43
# Python cannot parse AF_SMC addresses (they are sockaddr_in): bind, connect,
# getsockname and accept go through libc; a blocking accept is bounded by the
# node side's kill timer.
libc = ctypes.CDLL(None, use_errno=True)
def sockaddr_in(host, port):
    return struct.pack('=H', socket.AF_INET) + struct.pack('!H', port) + socket.inet_aton(host) + bytes(8)
def call(fn, s, host, port):
    a = sockaddr_in(host, port)
    if fn(s.fileno(), ctypes.c_char_p(a), len(a)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
host = sys.argv[1]
srv = socket.socket(AF_SMC, socket.SOCK_STREAM, 0)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
call(libc.bind, srv, host, 0)
srv.listen(1)
sa = ctypes.create_string_buffer(16)
salen = ctypes.c_uint32(16)
if libc.getsockname(srv.fileno(), sa, ctypes.byref(salen)) != 0:
    raise OSError(ctypes.get_errno(), 'getsockname')
port = struct.unpack('!H', sa.raw[2:4])[0]
def serve():
    fd = libc.accept(srv.fileno(), None, None)
    if fd < 0:
        raise OSError(ctypes.get_errno(), 'accept')
    c = socket.socket(AF_SMC, socket.SOCK_STREAM, 0, fileno=fd)
    c.settimeout(30)
    while True:
        b = c.recv(65536)
        if not b: break
        c.sendall(b)
    c.close()
t = threading.Thread(target=serve); t.start()
cli = socket.socket(AF_SMC, socket.SOCK_STREAM, 0)
call(libc.connect, cli, host, port)
cli.settimeout(30)
payload = b'sockgate-smc-' * 5000
cli.sendall(payload)
cli.shutdown(socket.SHUT_WR)
got = b''
while True:
    b = cli.recv(65536)
    if not b: break
    got += b
t.join(30)
print('AF_SMC echo over', host, 'port', port, 'bytes', len(got))
sys.exit(0 if got == payload else 1)
`;

if (!IN_VM) {
  test.skip('vm smoke: skipped, not inside the sockgate test VM (SOCKGATE_IN_VM unset); `npm run test:rdma` runs it there', () => {});
} else {
  test.serial(`the rxe device ${DEV} is active on eth0`, async (t) => {
    const link = await run('rdma', ['link', 'show']);
    t.log(link.out.trim());
    t.is(link.code, 0);
    t.regex(link.out, new RegExp(`link ${DEV}/1 state ACTIVE .*netdev eth0`));
    const devs = await run('ibv_devices', []);
    t.is(devs.code, 0);
    t.regex(devs.out, new RegExp(`\\b${DEV}\\b`));
    const info = await run('ibv_devinfo', ['-d', DEV]);
    t.is(info.code, 0);
    t.regex(info.out, /state:\s+PORT_ACTIVE/);
    t.regex(info.out, /link_layer:\s+Ethernet/);
  });

  test.serial('rping over rxe in one VM (rdma_cm, RDMA read/write)', async (t) => {
    const count = '5';
    const r = await serverClient(['rping', ['-s', '-a', ADDR, '-C', count]], ['rping', ['-c', '-a', ADDR, '-C', count, '-v']]);
    t.log(r.client.out.trim().split('\n').slice(-2).join('\n'));
    t.is(r.client.code, 0, r.client.out + r.server.out);
    t.is(r.server.code, 0, r.server.out);
    t.is((r.client.out.match(/ping data: rdma-ping-/g) ?? []).length, Number(count));
  });

  test.serial('perftest ib_send_bw -R (CQ events) over rxe in one VM', async (t) => {
    const args = ['-R', '-e', '-d', DEV, '-s', '65536', '-n', '200', '-F', '-p', '18601'];
    const r = await serverClient(['ib_send_bw', args], ['ib_send_bw', [...args, ADDR]]);
    t.is(r.client.code, 0, r.client.out + r.server.out);
    t.is(r.server.code, 0, r.server.out);
    const row = /^\s*65536\s+200\s+([\d.]+)\s+([\d.]+)/m.exec(r.client.out);
    t.truthy(row, r.client.out);
    t.log(`ib_send_bw -R 64 KiB in one VM: ${row?.[2]} MiB/s (average)`);
    t.true(Number(row?.[2]) > 0);
  });

  test.serial('AF_VSOCK echo over vsock_loopback', async (t) => {
    t.true(existsSync('/sys/module/vsock_loopback'), 'vsock_loopback is loaded');
    t.true(existsSync('/dev/vsock'), '/dev/vsock exists');
    const r = await run(PYTHON, ['-c', PY_VSOCK_ECHO, '5005']);
    t.log(r.out.trim());
    t.is(r.code, 0, r.out);
  });

  test.serial('smc is loaded and AF_SMC sockets carry data (127.0.0.1 and the rxe address)', async (t) => {
    t.true(existsSync('/sys/module/smc'), 'smc is loaded');
    t.regex(readFileSync('/proc/modules', 'utf8'), /^smc /m);
    const lo = await run(PYTHON, ['-c', PY_SMC_ECHO, '127.0.0.1']);
    t.log(lo.out.trim());
    t.is(lo.code, 0, lo.out);
    // Over the rxe-backed address the kernel may use SMC-R or fall back to TCP;
    // either way the bytes must arrive.
    const eth = await run(PYTHON, ['-c', PY_SMC_ECHO, ADDR]);
    t.log(eth.out.trim());
    t.is(eth.code, 0, eth.out);
  });
}
