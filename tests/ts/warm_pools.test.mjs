// The TypeScript SDK's daytona.warmPool (list, create, update, delete) against a
// `corral serve`. Started by tests/e2e/test_warm_pools.py, which passes CORRAL_API_URL and
// CORRAL_API_KEY.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Daytona } from '@daytonaio/sdk';

const env = (name) => {
  const v = process.env[name];
  assert.ok(v, `${name} is not set`);
  return v;
};

test('warmPool create, list, update, delete and a claim', async () => {
  const daytona = new Daytona({ apiKey: env('CORRAL_API_KEY'), apiUrl: env('CORRAL_API_URL') });
  const pool = await daytona.warmPool.create({ snapshot: 'host', pool: 1 });
  try {
    assert.equal(pool.snapshot, 'host');
    assert.equal(pool.pool, 1);
    assert.equal(pool.osUser, 'daytona');
    const end = Date.now() + 30000;
    let current = 0;
    while (Date.now() < end && current < 1) {
      const listed = (await daytona.warmPool.list()).find((p) => p.id === pool.id);
      assert.ok(listed, 'the pool is listed');
      current = listed.currentSize;
      if (current < 1) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(current, 1, 'the pool filled');
    const sb = await daytona.create({ labels: { who: 'ts' } });
    assert.equal(sb.labels.who, 'ts');
    assert.equal((await sb.process.executeCommand('id -un')).result.trim(), 'daytona');
    await daytona.delete(sb);
    const up = await daytona.warmPool.update(pool.id, { pool: 2 });
    assert.equal(up.pool, 2);
  } finally {
    await daytona.warmPool.delete(pool.id);
  }
  assert.ok(!(await daytona.warmPool.list()).some((p) => p.id === pool.id));
  await assert.rejects(daytona.warmPool.delete(pool.id));
});
