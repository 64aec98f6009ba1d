"""List filters through the real Python SDK: `id` and `name` are honoured (case-insensitive
prefixes, as Daytona's), and a filter corral does not apply yet is refused with a
`DaytonaError` naming it, never ignored (which would answer every sandbox)."""

import uuid

import pytest
from daytona import CreateSandboxFromSnapshotParams, DaytonaError, ListSandboxesQuery


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


@pytest.mark.parametrize("field,query", [
    ("snapshots", {"snapshots": ["host"]}),
    ("minCpu", {"min_cpu": 1}),
    ("isPublic", {"is_public": True}),
    ("sort", {"sort": "createdAt"}),
])
def test_unapplied_filters_are_refused_by_name(daytona, two, field, query):
    with pytest.raises(DaytonaError) as e:
        list(daytona.list(ListSandboxesQuery(**query)))
    assert field in str(e.value), e.value
