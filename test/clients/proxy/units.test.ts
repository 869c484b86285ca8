/**
 * The proxy's pure parts: address and forward specs, the SOCKS5 codec (IPv6
 * text both ways, the UDP header), the error → reply-code table, the proxy
 * config's key-naming errors, and the gateway's `vsock_uds` config section.
 */
import test from 'ava';
import { parseDialTarget, parseGatewayTarget, parseListenAddress, parseLocalForward, parseRemoteForward } from '../../../clients/proxy/address.js';
import { resolveProxySettings, validateProxyConfig } from '../../../clients/proxy/config.js';
import {
  AddressType,
  Reply,
  destinationUri,
  encodeAddress,
  encodeReply,
  encodeUdpDatagram,
  parseRequest,
  parseUdpDatagram,
  parseUserPass,
  replyForError,
} from '../../../clients/proxy/socks5.js';
import { connectLine, parseAck } from '../../../clients/proxy/vsock-uds.js';
import {
  ConnectRefusedError,
  ConnectTimeoutError,
  DnsError,
  GatewayUnavailableError,
  HostUnreachableError,
  InvalidArgumentError,
  PolicyDeniedError,
} from '../../../proto/errors.js';
import { loadConfig } from '../../../server/config.js';

test('gateway targets, listen addresses and dial targets', (t) => {
  t.deepEqual(parseGatewayTarget('127.0.0.1:7070'), { kind: 'tcp', host: '127.0.0.1', port: 7070 });
  t.deepEqual(parseGatewayTarget('[::1]:7070'), { kind: 'tcp', host: '::1', port: 7070 });
  t.deepEqual(parseGatewayTarget('unix:/run/sockgate.sock'), { kind: 'unix', path: '/run/sockgate.sock' });
  t.deepEqual(parseGatewayTarget('vsock:3:1024'), { kind: 'vsock', cid: 3, port: 1024 });
  for (const bad of ['', 'host', 'vsock:', 'vsock:2:0', 'vsock:a:1', '127.0.0.1:0', 'unix:']) {
    t.throws(() => parseGatewayTarget(bad), { instanceOf: InvalidArgumentError, message: /^--gateway: / }, bad);
  }
  t.deepEqual(parseListenAddress('1080', '--socks'), { kind: 'tcp', host: '127.0.0.1', port: 1080 });
  t.deepEqual(parseListenAddress('[::1]:0', '--socks'), { kind: 'tcp', host: '::1', port: 0 });
  t.deepEqual(parseDialTarget('vsock-uds:/run/vm1/v.sock:80', '-R'), { kind: 'vsock-uds', udsPath: '/run/vm1/v.sock', port: 80 });
  t.throws(() => parseDialTarget('127.0.0.1:0', '-R'), { message: /port other than 0/ });
});

test('-L and -R specs', (t) => {
  t.deepEqual(parseLocalForward('127.0.0.1:5432=tcp://db:5432'), { listen: { kind: 'tcp', host: '127.0.0.1', port: 5432 }, connect: 'tcp://db:5432' });
  t.deepEqual(parseLocalForward('unix:/tmp/db.sock=tcp6://[::1]:5432').listen, { kind: 'unix', path: '/tmp/db.sock' });
  t.throws(() => parseLocalForward('5432=udp://db:5432'), { message: /needs a tcp URI/ });
  t.throws(() => parseLocalForward('5432'), { message: /expected listen=uri/ });
  t.deepEqual(parseRemoteForward('tcp://0.0.0.0:8080=127.0.0.1:80'), { listen: 'tcp://0.0.0.0:8080', target: { kind: 'tcp', host: '127.0.0.1', port: 80 } });
  t.deepEqual(parseRemoteForward('tcp://0.0.0.0:0=unix:/run/app.sock').target, { kind: 'unix', path: '/run/app.sock' });
});

test('SOCKS5 codec: requests with each address type, IPv6 text both ways, UDP header', (t) => {
  const v6 = Buffer.from([5, 1, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0xbb]);
  const r = parseRequest(v6);
  t.true(r.ok);
  if (r.ok) {
    t.deepEqual(r.value.address, { type: AddressType.IPV6, host: '2001:db8::1', port: 443 });
    t.is(destinationUri('tcp', r.value.address), 'tcp6://[2001:db8::1]:443');
    t.deepEqual(encodeAddress('2001:db8::1', 443), v6.subarray(3));
  }
  t.deepEqual(parseRequest(v6.subarray(0, 10)), { ok: false, need: 22 });
  const dom = parseRequest(Buffer.from([5, 1, 0, 3, 9, ...Buffer.from('localhost'), 0, 80]));
  t.true(dom.ok && destinationUri('tcp', dom.value.address) === 'tcp://localhost:80');
  const bad = parseRequest(Buffer.from([5, 1, 0, 7, 0, 0]));
  t.true(!bad.ok && 'reply' in bad && bad.reply === Reply.ADDRESS_TYPE_NOT_SUPPORTED);
  t.deepEqual([...encodeReply(Reply.NOT_ALLOWED)], [5, 2, 0, 1, 0, 0, 0, 0, 0, 0]);
  t.deepEqual(encodeAddress('::ffff:10.0.0.1', 1), Buffer.from([4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1, 0, 1]));
  const up = parseUserPass(Buffer.from([1, 1, 0x75, 2, 0x70, 0x77]));
  t.true(up.ok && up.value.username.toString() === 'u' && up.value.password.toString() === 'pw');
  const dg = encodeUdpDatagram('::1', 53, Buffer.from('q'));
  const back = parseUdpDatagram(dg);
  t.deepEqual(back && { frag: back.frag, host: back.address.host, port: back.address.port, data: back.data.toString() }, { frag: 0, host: '::1', port: 53, data: 'q' });
  t.is(parseUdpDatagram(Buffer.from([0, 0, 0, 1, 1, 2])), undefined, 'truncated');
});

test('gateway errors map to SOCKS reply codes', (t) => {
  t.is(replyForError(new PolicyDeniedError('no')), Reply.NOT_ALLOWED);
  t.is(replyForError(new ConnectRefusedError()), Reply.CONNECTION_REFUSED);
  t.is(replyForError(new HostUnreachableError('connect tcp://10.0.0.1:80: connect EHOSTUNREACH 10.0.0.1:80')), Reply.HOST_UNREACHABLE);
  t.is(replyForError(new HostUnreachableError('connect tcp://10.0.0.1:80: connect ENETUNREACH 10.0.0.1:80')), Reply.NETWORK_UNREACHABLE);
  t.is(replyForError(new DnsError()), Reply.HOST_UNREACHABLE);
  t.is(replyForError(new ConnectTimeoutError()), Reply.TTL_EXPIRED);
  t.is(replyForError(new GatewayUnavailableError()), Reply.GENERAL_FAILURE);
  t.is(replyForError(new Error('anything')), Reply.GENERAL_FAILURE);
});

test('vsock-uds handshake lines', (t) => {
  t.is(connectLine(52), 'CONNECT 52\n');
  t.is(parseAck('OK 1073741824'), 1073741824);
  t.is(parseAck('NOK'), undefined);
});

test('proxy config: key-named errors; flags over the file', (t) => {
  t.throws(() => validateProxyConfig({ gateway: 'nowhere', local_forwards: ['x'], socks: { listen: 1080, users: [{ username: '' , password: 'p' }] } }, 'test'), {
    message: /gateway: gateway: "nowhere" is not valid[\s\S]*local_forwards\.0: [\s\S]*socks\.listen: [\s\S]*socks\.users\.0\.username/,
  });
  const cfg = validateProxyConfig({ gateway: 'unix:/run/gw.sock', local_forwards: ['1=tcp://a:1'], socks: { users: [{ username: 'u', password: 'p' }] } }, 'test');
  const s = resolveProxySettings({ local: ['2=tcp://b:2'], socks: '127.0.0.1:1081' }, cfg);
  t.deepEqual(s.gateway, { kind: 'unix', path: '/run/gw.sock' });
  t.deepEqual(s.localForwards.map((f) => f.connect), ['tcp://a:1', 'tcp://b:2']);
  t.deepEqual(s.socks, { listen: { kind: 'tcp', host: '127.0.0.1', port: 1081 }, users: [{ username: 'u', password: 'p' }], udpBind: 'udp://0.0.0.0:0' });
  t.throws(() => resolveProxySettings({ gateway: '127.0.0.1:1', socks: '1080', socksUser: 'u' }), { message: /--socks-user and --socks-pass go together/ });
});

test('gateway config: vsock_uds is optional and its errors name the key', (t) => {
  t.is(loadConfig().vsock_uds, undefined);
  t.deepEqual(loadConfig({ overrides: { vsock_uds: { path: '/run/vm1/v.sock', control_port: 7070, data_port: 7071 } } }).vsock_uds, {
    path: '/run/vm1/v.sock',
    vms: [],
    max_vms: 1024,
    control_port: 7070,
    data_port: 7071,
  });
  t.throws(() => loadConfig({ overrides: { vsock_uds: { path: 'v.sock', control_port: 7070, data_port: 7070 } } }), {
    message: /vsock_uds\.path: expected an absolute path/,
  });
  t.throws(() => loadConfig({ overrides: { vsock_uds: { path: '/v.sock', control_port: 7070, data_port: 7070 } } }), {
    message: /vsock_uds\.data_port: control_port and data_port must differ/,
  });
  t.throws(() => loadConfig({ overrides: { vsock_uds: { path: '/v.sock', control_port: 7070, data_port: 7071, cid: 3 } } }), { message: /vsock_uds\.cid: unknown key/ });
});
