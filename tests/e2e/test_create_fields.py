"""Nothing a create asks for is silently dropped, through the real Python SDK (sync and
async): what corral does not do yet (secrets, GPU types) is refused
with a `DaytonaError` naming the field, and no sandbox is left behind; what it does is
honoured. (`crates/corral-testing/tests/create_fields.rs` walks every field of the SDK's
model.)"""

import asyncio

import pytest
from daytona import AsyncDaytona, CreateSandboxFromSnapshotParams, DaytonaConfig, DaytonaError

REFUSED = [
    ("secrets", {"secrets": {"API_KEY": "my-secret-name"}}),
]


def live(daytona):
    return [s.id for s in daytona.list() if s.state != "destroyed"]


@pytest.mark.parametrize("field,params", REFUSED, ids=[f for f, _ in REFUSED])
def test_unsupported_create_fields_are_refused_by_name(daytona, field, params):
    before = live(daytona)
    with pytest.raises(DaytonaError) as e:
        daytona.create(CreateSandboxFromSnapshotParams(**params), timeout=60)
    assert field in str(e.value), e.value
    # Nothing new (an earlier test's sandbox may still be finishing its delete meanwhile).
    assert set(live(daytona)) <= set(before)


def test_supported_create_fields_are_honoured(daytona):
    sb = daytona.create(
        CreateSandboxFromSnapshotParams(
            queue_timeout=2, auto_archive_interval=7, auto_pause_interval=3, ttl_minutes=600,
            env_vars={"FIELD": "kept"}, labels={"fields": "yes"},
        ),
        timeout=60,
    )
    try:
        assert sb.state == "started" and sb.auto_archive_interval == 7
        assert sb.auto_pause_interval == 3 and sb.auto_destroy_at is not None
        assert sb.labels["fields"] == "yes"
        assert sb.process.exec("echo $FIELD").result.strip() == "kept"
    finally:
        daytona.delete(sb, wait=True)


def test_the_async_sdk_gets_the_same_refusal(server):
    async def main():
        async with AsyncDaytona(DaytonaConfig(api_key=server.key, api_url=f"{server.url}/api")) as d:
            with pytest.raises(DaytonaError) as e:
                await d.create(CreateSandboxFromSnapshotParams(secrets={"K": "name"}), timeout=60)
            return str(e.value)

    assert "secrets" in asyncio.run(main())
