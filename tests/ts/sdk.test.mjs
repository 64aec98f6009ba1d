// The official Daytona TypeScript SDK against a real `corral serve`, with node's own test
// runner. Started by tests/e2e/test_typescript_sdk.py, which runs the server and a local
// registry and passes:
//   CORRAL_API_URL, CORRAL_API_KEY  the server
//   CORRAL_TEST_IMAGE               an image in a loopback registry (busybox)
//   CORRAL_CONTEXT_DIR              a scratch directory for build context
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import {
  Daytona,
  DaytonaNotFoundError,
  Image,
} from '@daytonaio/sdk';
// The SDK's own Socket.IO client (a dependency of @daytonaio/sdk).
import { io } from 'socket.io-client';

const env = (name) => {
  const v = process.env[name];
  assert.ok(v, `${name} is not set`);
  return v;
};
const daytona = new Daytona({ apiKey: env('CORRAL_API_KEY'), apiUrl: env('CORRAL_API_URL') });
const waitFor = async (what, check, ms = 10000) => {
  const end = Date.now() + ms;
  while (!check()) {
    assert.ok(Date.now() < end, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};
const uniq = (prefix) => `${prefix}-${Math.random().toString(16).slice(2, 10)}`;

test('a sandbox runs commands, code, files, sessions and a terminal', async () => {
  const sb = await daytona.create({ envVars: { FOO: 'bar baz' }, labels: { suite: 'ts' } });
  try {
    assert.equal(sb.state, 'started');
    const r = await sb.process.executeCommand('echo "$FOO"; exit 3');
    assert.equal(r.exitCode, 3);
    assert.equal(r.result, 'bar baz\n');

    const code = await sb.process.codeRun('import sys\nprint(sum(range(10)), file=sys.stdout)');
    assert.equal(code.exitCode, 0);
    assert.equal(code.result.trim(), '45');

    await sb.fs.createFolder('/tmp/ts-dir', '755');
    await sb.fs.uploadFile(Buffer.from('hello from ts'), '/tmp/ts-dir/a.txt');
    assert.equal((await sb.fs.downloadFile('/tmp/ts-dir/a.txt')).toString(), 'hello from ts');
    const names = (await sb.fs.listFiles('/tmp/ts-dir')).map((f) => f.name);
    assert.deepEqual(names, ['a.txt']);
    const found = await sb.fs.findFiles('/tmp/ts-dir', 'hello');
    assert.equal(found.length, 1);
    await assert.rejects(sb.fs.downloadFile('/tmp/ts-dir/missing'), (e) => e.statusCode === 404);

    await sb.process.createSession('s1');
    await sb.process.executeSessionCommand('s1', { command: 'export X=41' });
    const s = await sb.process.executeSessionCommand('s1', { command: 'echo $((X+1))' });
    assert.equal(s.exitCode, 0);
    assert.equal(s.stdout.trim(), '42');

    let out = '';
    const pty = await sb.process.createPty({
      id: 'ts-pty',
      onData: (b) => { out += Buffer.from(b).toString(); },
    });
    await pty.waitForConnection();
    await pty.sendInput('echo pty-$((6*7))\nexit 5\n');
    const result = await pty.wait();
    assert.equal(result.exitCode, 5);
    assert.match(out, /pty-42/);

    const listed = [];
    for await (const item of daytona.list({ labels: { suite: 'ts' } })) listed.push(item.id);
    assert.deepEqual(listed, [sb.id]);

    await sb.stop();
    assert.equal(sb.state, 'stopped');
    await sb.start();
    assert.equal(sb.state, 'started');
    assert.equal((await sb.fs.downloadFile('/tmp/ts-dir/a.txt')).toString(), 'hello from ts');
  } finally {
    await sb.delete(60, true);
  }
  await assert.rejects(daytona.get(sb.id), DaytonaNotFoundError);
});

test('snapshots, forks and volumes', async () => {
  const vol = await daytona.volume.get(uniq('tsvol'), true);
  assert.equal(vol.state, 'ready');
  const sb = await daytona.create({ volumes: [{ volumeId: vol.id, mountPath: '/data' }] });
  const name = uniq('ts-snap');
  const others = [];
  try {
    await sb.process.executeCommand('echo kept > /tmp/snap.txt; echo shared > /data/v.txt');
    await sb.createSnapshot(name);
    await sb.process.executeCommand('echo later > /tmp/later.txt');

    const fork = await sb.fork();
    others.push(fork);
    assert.equal(fork.state, 'started');
    assert.equal((await fork.process.executeCommand('cat /tmp/snap.txt /tmp/later.txt')).result,
      'kept\nlater\n');
    await fork.process.executeCommand('echo fork-only > /tmp/snap.txt');
    assert.equal((await sb.process.executeCommand('cat /tmp/snap.txt')).result, 'kept\n');

    const fromSnap = await daytona.create({ snapshot: name });
    others.push(fromSnap);
    const r = await fromSnap.process.executeCommand('cat /tmp/snap.txt; test -e /tmp/later.txt || echo absent');
    assert.equal(r.result, 'kept\nabsent\n');
    assert.equal((await fork.process.executeCommand('cat /data/v.txt')).result, 'shared\n');

    const snap = await daytona.snapshot.get(name);
    assert.equal(snap.state, 'active');
    assert.ok(snap.size > 0);
  } finally {
    for (const s of [sb, ...others]) await s.delete(60, true);
  }
  await daytona.snapshot.delete(await daytona.snapshot.get(name));
  await daytona.volume.delete(await daytona.volume.get(vol.name));
});

test('an image from a registry, built with steps and local files', async () => {
  const dir = env('CORRAL_CONTEXT_DIR');
  const local = path.join(dir, 'ts-app');
  fs.mkdirSync(path.join(local, 'lib'), { recursive: true });
  fs.writeFileSync(path.join(local, 'lib', 'data.txt'), 'from the ts context\n');
  fs.writeFileSync(path.join(dir, 'single.txt'), 'single file\n');
  const image = Image.base(env('CORRAL_TEST_IMAGE'))
    .addLocalDir(local, '/srv/app')
    .addLocalFile(path.join(dir, 'single.txt'), '/etc/single.txt')
    .runCommands('cat /srv/app/lib/data.txt > /built.txt')
    .env({ GREETING: 'hi' });
  const logs = [];
  const sb = await daytona.create({ image }, { timeout: 240, onSnapshotCreateLogs: (l) => logs.push(l) });
  try {
    assert.equal(sb.state, 'started');
    const r = await sb.process.executeCommand('cat /built.txt /etc/single.txt; echo $GREETING');
    assert.equal(r.result, 'from the ts context\nsingle file\nhi\n');
    assert.match(logs.join(''), /Step 1\//);
  } finally {
    await sb.delete(60, true);
  }
});

test('errors come back as the SDK error classes', async () => {
  await assert.rejects(daytona.get('no-such-sandbox'), DaytonaNotFoundError);
  await assert.rejects(daytona.snapshot.get('no-such-snapshot'), DaytonaNotFoundError);
  await assert.rejects(daytona.create({ snapshot: 'no-such-snapshot' }), (e) => e.statusCode === 404 || e.statusCode === 400);
});

test('sandbox events arrive over Socket.IO', async () => {
  const apiUrl = new URL(env('CORRAL_API_URL'));
  const path = `${apiUrl.pathname.replace(/\/$/, '')}/socket.io/`;
  const connect = (token) => io(apiUrl.origin, {
    path, transports: ['websocket'], auth: { token }, reconnection: false,
  });

  // A wrong key is refused in the CONNECT answer.
  const bad = connect('not-the-key');
  const refusal = await new Promise((resolve) => {
    bad.on('connect', () => resolve(null));
    bad.on('connect_error', resolve);
  });
  bad.close();
  assert.ok(refusal, 'connected with a wrong key');
  assert.match(refusal.message, /Unauthorized/);

  // Long-polling is not served, with Engine.IO's error body.
  const polling = await fetch(`${apiUrl.origin}${path}?EIO=4&transport=polling`);
  assert.equal(polling.status, 400);
  assert.deepEqual(await polling.json(), { code: 3, message: 'Bad request' });

  // The right key hears about a sandbox the SDK creates, stops and deletes.
  const events = [];
  const sock = connect(env('CORRAL_API_KEY'));
  for (const name of ['sandbox.created', 'sandbox.state.updated']) {
    sock.on(name, (data) => events.push([name, data]));
  }
  await new Promise((resolve, reject) => {
    sock.on('connect', resolve);
    sock.on('connect_error', reject);
  });
  try {
    const sb = await daytona.create({ labels: { suite: 'ts-events' } });
    const mine = (name) => events.filter(([n, d]) => n === name && d.sandbox?.id === sb.id);
    await waitFor('sandbox.created', () => mine('sandbox.created').length > 0);
    const created = mine('sandbox.created')[0][1].sandbox;
    assert.equal(created.labels.suite, 'ts-events');
    assert.ok(created.toolboxProxyUrl.endsWith('/toolbox'), created.toolboxProxyUrl);

    // The SDK's own subscription: a second handle on the sandbox learns of the stop from the
    // event alone (it is never refreshed).
    assert.ok(daytona.eventDispatcher, 'the SDK streams events (no deprecated polling)');
    await waitFor('the SDK\'s socket', () => daytona.eventDispatcher.isConnected);
    const other = await daytona.get(sb.id);
    assert.equal(other.state, 'started');
    await sb.stop();
    await waitFor('the stopped state on the other handle', () => other.state === 'stopped');
    // The test's own socket is another connection: it may hear it a moment later.
    const states = () => mine('sandbox.state.updated').map(([, d]) => d.newState);
    await waitFor('stopped on the test\'s socket', () => states().includes('stopped'));
    const stopped = mine('sandbox.state.updated').find(([, d]) => d.newState === 'stopped')[1];
    assert.equal(stopped.sandbox.state, 'stopped');

    await sb.delete(60, true);
    await waitFor('destroyed', () => states().includes('destroyed'));
    await waitFor('the destroyed state on the other handle', () => other.state === 'destroyed');
  } finally {
    sock.close();
  }
});

test('SSH access: create, validate, revoke', async () => {
  const sb = await daytona.create({ labels: { suite: 'ts-ssh' } });
  try {
    const access = await sb.createSshAccess(30);
    assert.equal(access.sandboxId, sb.id);
    assert.match(access.token, /^[A-Za-z0-9]{32}$/);
    assert.match(access.sshCommand, new RegExp(`^ssh -p \\d+ ${access.token}@`));
    assert.ok(new Date(access.expiresAt) > new Date());
    const ok = await sb.validateSshAccess(access.token);
    assert.equal(ok.valid, true);
    assert.equal(ok.sandboxId, sb.id);
    await sb.revokeSshAccess(access.token);
    assert.equal((await sb.validateSshAccess(access.token)).valid, false);
  } finally {
    await sb.delete(60, true);
  }
});

test('pause, wake on a toolbox call, auto-pause and TTL', async () => {
  const sb = await daytona.create({ labels: { suite: 'ts-pause' }, autoPauseInterval: 30, ttlMinutes: 120 });
  try {
    assert.equal(sb.autoPauseInterval, 30);
    assert.ok(sb.autoDestroyAt, 'a TTL gives autoDestroyAt');
    await sb.process.executeCommand('nohup sleep 300 >/dev/null 2>&1 &');
    await sb.pause();
    assert.equal(sb.state, 'paused');
    // The exec resumes it and is answered.
    const r = await sb.process.executeCommand('echo woke; pgrep -c sleep');
    assert.equal(r.exitCode, 0);
    assert.deepEqual(r.result.trim().split('\n'), ['woke', '1']);
    await sb.refreshData();
    assert.equal(sb.state, 'started');
    await sb.pause();
    await sb.start();
    assert.equal(sb.state, 'started');
    await sb.setAutoPauseInterval(0);
    await sb.setTtl(0);
    await sb.refreshData();
    assert.equal(sb.autoPauseInterval, 0);
    assert.equal(sb.autoDestroyAt, undefined);
    await sb.stop();
    await assert.rejects(sb.pause(), /only a started sandbox can be paused/);
  } finally {
    await sb.delete(60, true);
  }
});
