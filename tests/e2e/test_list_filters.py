"""List filters and sorting through the real Python SDK: every filter of `ListSandboxesQuery`
is applied (`id` and `name` as case-insensitive prefixes, as Daytona's), and sorted lists come
in keyset pages. (Refusals of bad or unknown parameters are tested at the router, in
`crates/corral-testing/tests/routes/sandboxes.rs`.)"""

import uuid

import pytest
from daytona import CreateSandboxFromSnapshotParams, ListSandboxesQuery


@pytest.fixture
def two(daytona):
    tag = uuid.uuid4().hex[:6]
    made = [daytona.create(CreateSandboxFromSnapshotParams(name=f"lf-{tag}-{n}"), timeout=60)
            for n in ("alpha", "beta")]
    yield tag, made
    for sb in made:
        daytona.delete(sb, wait=True)


def test_name_and_id_prefixes(daytona, two):
    tag, (alpha, beta) = two
    names = sorted(s.name for s in daytona.list(ListSandboxesQuery(name=f"LF-{tag}")))
    assert names == [alpha.name, beta.name]
    assert [s.name for s in daytona.list(ListSandboxesQuery(name=f"lf-{tag}-b"))] == [beta.name]
    assert [s.id for s in daytona.list(ListSandboxesQuery(id=alpha.id[:8].upper()))] == [alpha.id]
    assert list(daytona.list(ListSandboxesQuery(name=f"lf-{tag}-zzz"))) == []


def test_the_sdk_s_other_filters(daytona, two):
    from datetime import datetime, timedelta, timezone

    tag, (alpha, beta) = two
    mine = lambda **q: sorted(s.name for s in daytona.list(ListSandboxesQuery(name=f"lf-{tag}", **q)))
    both = sorted([alpha.name, beta.name])
    assert mine(snapshots=["host"]) == both
    assert mine(snapshots=["no-such-snapshot"]) == []
    assert mine(min_cpu=1, max_cpu=64, min_memory_gib=1, min_disk_gib=1) == both
    assert mine(min_cpu=65) == []
    assert mine(is_public=False) == both and mine(is_public=True) == []
    assert mine(is_recoverable=True) == []
    hour = timedelta(hours=1)
    now = datetime.now(timezone.utc)
    assert mine(created_at_after=now - hour, created_at_before=now + hour) == both
    assert mine(created_at_after=now + hour) == []
    # A naive datetime is sent without an offset: read as UTC.
    assert mine(created_at_before=datetime.utcnow() - hour) == []
    assert mine(last_activity_after=now - hour) == both


def test_sorted_pages(daytona, two):
    tag, (alpha, beta) = two
    names = lambda **q: [s.name for s in daytona.list(ListSandboxesQuery(name=f"lf-{tag}", limit=1, **q))]
    assert names(sort="name", order="desc") == [beta.name, alpha.name]
    assert names(sort="name", order="asc") == [alpha.name, beta.name]
    assert names(sort="createdAt", order="desc") == [beta.name, alpha.name]

