// The TypeScript SDK's toolbox surface against a real `corral serve`: git, file operations,
// the code interpreter, sessions, previews, signed file URLs and sandbox settings. Started by
// tests/e2e/test_typescript_sdk.py (CORRAL_API_URL, CORRAL_API_KEY).
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, test } from 'node:test';
import { Daytona } from '@daytonaio/sdk';

const daytona = new Daytona({
  apiKey: process.env.CORRAL_API_KEY,
  apiUrl: process.env.CORRAL_API_URL,
});
let sb;

// GET through node's http with every name resolved to loopback: preview hosts are
// `{port}-{id}.localhost`, which browsers and curl resolve but node's resolver does not.
function getLoopback(url, headers = {}) {
  const lookup = (_host, opts, cb) =>
    opts && opts.all ? cb(null, [{ address: '127.0.0.1', family: 4 }]) : cb(null, '127.0.0.1', 4);
  return new Promise((resolve, reject) => {
    http
      .get(url, { headers, lookup }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c) => { text += c; });
        res.on('end', () => resolve({ status: res.statusCode, text }));
      })
      .on('error', reject);
  });
}

before(async () => {
  sb = await daytona.create({ labels: { suite: 'ts-toolbox' } });
});
after(async () => {
  await sb.delete(60, true);
});

test('git: init, config, commit, branches, remotes, restore and reset', async () => {
  const repo = '/tmp/repo';
  await sb.git.init(repo);
  await sb.git.configureUser('Ann', 'ann@example.com', 'local', repo);
  await sb.git.setConfig('core.editor', 'vi', 'local', repo);
  assert.equal(await sb.git.getConfig('core.editor', 'local', repo), 'vi');
  await sb.fs.uploadFile(Buffer.from('one\n'), `${repo}/a.txt`);
  assert.deepEqual((await sb.git.status(repo)).fileStatus.map((f) => f.name), ['a.txt']);
  await sb.git.add(repo, ['a.txt']);
  const { sha } = await sb.git.commit(repo, 'first', 'Ann', 'ann@example.com');
  assert.match(sha, /^[0-9a-f]{40}$/);
  const main = (await sb.git.branches(repo)).current;
  await sb.git.createBranch(repo, 'dev');
  await sb.git.checkoutBranch(repo, 'dev');
  assert.equal((await sb.git.status(repo)).currentBranch, 'dev');
  assert.deepEqual((await sb.git.branches(repo)).branches.sort(), ['dev', main].sort());
  await sb.git.remoteAdd(repo, 'origin', 'https://example.com/x.git');
  assert.equal(await sb.git.remoteGet(repo, 'origin'), 'https://example.com/x.git');
  await sb.fs.uploadFile(Buffer.from('changed\n'), `${repo}/a.txt`);
  await sb.git.restore(repo, ['a.txt']);
  assert.equal((await sb.fs.downloadFile(`${repo}/a.txt`)).toString(), 'one\n');
  await sb.fs.uploadFile(Buffer.from('again\n'), `${repo}/a.txt`);
  await sb.git.reset(repo, 'hard', 'HEAD');
  assert.equal((await sb.fs.downloadFile(`${repo}/a.txt`)).toString(), 'one\n');
  await sb.git.checkoutBranch(repo, main);
  await sb.git.deleteBranch(repo, 'dev');
  assert.deepEqual((await sb.git.branches(repo)).branches, [main]);
});

test('files: details, permissions, move, search, replace, bulk transfer, delete', async () => {
  await sb.fs.uploadFile(Buffer.from('hello x'), '/tmp/f/a.txt');
  const details = await sb.fs.getFileDetails('/tmp/f/a.txt');
  assert.equal(details.size, 7);
  assert.equal(details.isDir, false);
  await sb.fs.setFilePermissions('/tmp/f/a.txt', { mode: '600' });
  assert.equal((await sb.fs.getFileDetails('/tmp/f/a.txt')).mode, '-rw-------');
  await sb.fs.moveFiles('/tmp/f/a.txt', '/tmp/f/b.txt');
  assert.deepEqual((await sb.fs.searchFiles('/tmp/f', '*.txt')).files, ['/tmp/f/b.txt']);
  const replaced = await sb.fs.replaceInFiles(['/tmp/f/b.txt'], 'x', 'world');
  assert.equal(replaced[0].success, true);
  assert.equal((await sb.fs.downloadFile('/tmp/f/b.txt')).toString(), 'hello world');
  await sb.fs.uploadFiles([
    { source: Buffer.from('1'), destination: '/tmp/f/u1' },
    { source: Buffer.from('2'), destination: '/tmp/f/u2' },
  ]);
  const got = await sb.fs.downloadFiles([{ source: '/tmp/f/u1' }, { source: '/tmp/f/u2' }]);
  assert.deepEqual(got.map((r) => r.result.toString()), ['1', '2']);
  await sb.fs.deleteFile('/tmp/f/u1');
  const names = (await sb.fs.listFiles('/tmp/f')).map((f) => f.name).sort();
  assert.deepEqual(names, ['b.txt', 'u2']);
});

test('a hundred uploads in a row all land (no dropped connection after a multipart body)', async () => {
  for (let i = 0; i < 100; i++) {
    await sb.fs.uploadFile(Buffer.from(`n${i}`), `/tmp/many/${i}.txt`);
  }
  assert.equal((await sb.fs.listFiles('/tmp/many')).length, 100);
  assert.equal((await sb.fs.downloadFile('/tmp/many/99.txt')).toString(), 'n99');
});

test('code interpreter keeps state per context; sessions stream logs', async () => {
  const first = await sb.codeInterpreter.runCode('x = 41\nprint(x + 1)');
  assert.equal(first.stdout, '42\n');
  const ctx = await sb.codeInterpreter.createContext('/tmp');
  await sb.codeInterpreter.runCode('y = "in context"', { context: ctx });
  const again = await sb.codeInterpreter.runCode('import os\nprint(y, os.getcwd())', { context: ctx });
  assert.equal(again.stdout, 'in context /tmp\n');
  await sb.codeInterpreter.deleteContext(ctx);

  await sb.process.createSession('logs');
  const cmd = await sb.process.executeSessionCommand('logs', {
    command: 'echo out; echo err >&2; sleep 0.3; echo done',
    runAsync: true,
  });
  let out = '';
  let err = '';
  await sb.process.getSessionCommandLogs('logs', cmd.cmdId, (c) => { out += c; }, (c) => { err += c; });
  assert.equal(out, 'out\ndone\n');
  assert.equal(err, 'err\n');
  assert.equal((await sb.process.getSessionCommand('logs', cmd.cmdId)).exitCode, 0);
  await sb.process.deleteSession('logs');
});

test('previews and signed file URLs work without the API key', async () => {
  await sb.fs.uploadFile(Buffer.from('<h1>hi</h1>'), '/tmp/www/index.html');
  await sb.process.createSession('web');
  await sb.process.executeSessionCommand('web', {
    command: 'cd /tmp/www && exec python3 -m http.server 8080 --bind 127.0.0.1',
    runAsync: true,
  });
  const link = await sb.getPreviewLink(8080);
  let page;
  for (let i = 0; i < 50; i++) {
    const r = await getLoopback(link.url, { 'x-daytona-preview-token': link.token });
    if (r.status === 200) { page = r.text; break; }
    await new Promise((res) => setTimeout(res, 100));
  }
  assert.equal(page, '<h1>hi</h1>');

  const url = await sb.downloadUrl('/tmp/www/index.html', 60);
  const r = await fetch(url);
  assert.equal(r.status, 200);
  assert.equal(await r.text(), '<h1>hi</h1>');
  const up = await sb.uploadUrl('/tmp/www/up.txt', 60);
  const form = new FormData();
  form.append('file', new Blob(['via signed url']), 'up.txt');
  assert.ok((await fetch(up, { method: 'POST', body: form })).ok);
  assert.equal((await sb.fs.downloadFile('/tmp/www/up.txt')).toString(), 'via signed url');
  await sb.rotateSigningKey();
  assert.equal((await fetch(url)).status, 403);
});

test('settings: labels, timers, network, resources, archive and start', async () => {
  assert.deepEqual(await sb.setLabels({ suite: 'ts-toolbox', a: 'b' }), { suite: 'ts-toolbox', a: 'b' });
  await sb.setAutostopInterval(30);
  await sb.setAutoArchiveInterval(60);
  await sb.setAutoDeleteInterval(-1);
  await sb.refreshData();
  assert.equal(sb.autoStopInterval, 30);
  assert.equal(sb.autoArchiveInterval, 60);
  assert.equal(await sb.getUserHomeDir(), '/home/daytona');
  await sb.updateNetworkSettings({ networkBlockAll: true });
  const blocked = await sb.process.executeCommand('python3 -c "import socket; socket.create_connection((\'1.1.1.1\', 53), 2)" 2>&1 | tail -1');
  assert.notEqual(blocked.exitCode, undefined);
  assert.match(blocked.result, /Error|unreachable|timed out/i);
  await sb.updateNetworkSettings({ networkBlockAll: false });
  await sb.stop();
  await sb.resize({ cpu: 2, memory: 2 });
  await sb.start();
  assert.equal(sb.cpu, 2);
  assert.equal(sb.memory, 2);
  await sb.stop();
  await sb.archive();
  await sb.refreshData();
  assert.equal(sb.state, 'archived');
  await sb.start();
  assert.equal(sb.state, 'started');
  assert.equal((await sb.fs.downloadFile('/tmp/f/b.txt')).toString(), 'hello world');
});
