"""Codespec validation rules and equality (docs/contract.md §1), including property tests."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.core.codespec import (
    Buffers,
    Codespec,
    Quantities,
    Resources,
    equality_key,
    normalize,
    parse_reference,
    same_content,
    validate,
)
from controlplane.core.errors import InvalidArgument


def worker(**kw) -> Codespec:
    return Codespec(name="w", image="img", kind="worker", **kw)


def job(**kw) -> Codespec:
    return Codespec(name="j", image="img", **kw)


def field_of(spec: Codespec) -> str:
    with pytest.raises(InvalidArgument) as info:
        validate(spec)
    return info.value.field


def test_valid_specs_pass() -> None:
    validate(job(env={"A": "1"}, buffers=Buffers(("in",), ("out",)), max_replicas=1))
    validate(worker(endpoints={"http": 8080, "Grpc_2": 1}))


@pytest.mark.parametrize("name", ["", "A", "-x", ".x", "a" * 64, "a b", "a/b", "ä"])
def test_bad_names(name: str) -> None:
    assert field_of(job().__class__(name=name, image="i")) == "name"


@pytest.mark.parametrize("name", ["a", "0", "a-b.c_d", "a" * 63])
def test_good_names(name: str) -> None:
    validate(Codespec(name=name, image="i"))


def test_rules_name_their_field() -> None:
    assert field_of(job(endpoints={"http": 80})) == "endpoints"
    assert field_of(worker(buffers=Buffers(("in",), ()))) == "buffers"
    assert field_of(worker(endpoints={"1x": 80})) == "endpoints.1x"
    assert field_of(worker(endpoints={"http": 0})) == "endpoints.http"
    assert field_of(worker(endpoints={"http": 65536})) == "endpoints.http"
    assert field_of(worker(endpoints={"http": 1, "HTTP": 2})) in (
        "endpoints.HTTP",
        "endpoints.http",
    )
    assert field_of(job(max_replicas=0)) == "maxReplicas"
    assert field_of(Codespec(name="x", image="")) == "image"
    assert field_of(job(env={"1BAD": "x"})) == "env.1BAD"
    assert field_of(job(buffers=Buffers(("a",), ("a",)))) == "buffers.outputs[0]"
    bad_cpu = Resources(requests=Quantities(cpu="lots"))
    assert field_of(job(resources=bad_cpu)) == "resources.requests.cpu"
    too_big = Resources(requests=Quantities(memory="2Gi"), limits=Quantities(memory="1Gi"))
    assert field_of(job(resources=too_big)) == "resources.requests.memory"
    assert field_of(job(resources=Resources(gpu=-1))) == "resources.gpu"


def test_error_message_says_how_to_fix() -> None:
    with pytest.raises(InvalidArgument, match="belong to worker codespecs"):
        validate(job(endpoints={"http": 80}))


def test_equality_ignores_order_and_quantity_spelling() -> None:
    a = worker(
        env={"A": "1", "B": "2"},
        endpoints={"x": 1, "y": 2},
        resources=Resources(Quantities("1", "1Gi"), Quantities("2", "2Gi")),
    )
    b = worker(
        env={"B": "2", "A": "1"},
        endpoints={"y": 2, "x": 1},
        resources=Resources(Quantities("1000m", "1024Mi"), Quantities("2000m", "2048Mi")),
    )
    assert same_content(a, b)
    assert same_content(job(buffers=Buffers(("a", "b"), ())), job(buffers=Buffers(("b", "a"), ())))


def test_equality_keeps_command_and_args_order() -> None:
    assert not same_content(job(args=("a", "b")), job(args=("b", "a")))
    assert not same_content(job(command=("a", "b")), job(command=("b", "a")))
    assert not same_content(job(args=("a",)), job(command=("a",)))


def test_every_field_matters() -> None:
    base = job()
    for changed in (
        replace(base, image="other"),
        replace(base, env={"A": "1"}),
        replace(base, working_dir="/w"),
        replace(base, max_replicas=3),
        replace(base, resources=Resources(gpu=1)),
        replace(base, kind="worker"),
    ):
        assert not same_content(base, changed)


def test_references() -> None:
    assert parse_reference("abc") == ("abc", None)
    assert parse_reference("abc/versions/4") == ("abc", 4)
    for bad in ("abc/versions/x", "abc/versions/0", "ABC", "a/b"):
        with pytest.raises(InvalidArgument):
            parse_reference(bad)


# --- property-based ---------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
env_keys = st.from_regex(r"[A-Z_][A-Z0-9_]{0,6}", fullmatch=True)
cpu = st.integers(0, 64_000)
mem_mi = st.integers(0, 64 * 1024)


def cpu_text(millis: int, style: int) -> str:
    return f"{millis}m" if style == 0 or millis % 1000 else str(millis // 1000)


def mem_text(mi: int, style: int) -> str:
    if style == 0 or mi % 1024:
        return f"{mi}Mi"
    return f"{mi // 1024}Gi"


@st.composite
def codespecs(draw: st.DrawFn) -> tuple[Codespec, Codespec]:
    """Two codespecs with the same meaning, written differently."""
    kind = draw(st.sampled_from(["job", "worker"]))
    env = draw(st.dictionaries(env_keys, st.text(max_size=5), max_size=5))
    endpoints = (
        draw(
            st.dictionaries(
                st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True),
                st.integers(1, 65535),
                max_size=3,
            )
        )
        if kind == "worker"
        else {}
    )
    c, m = draw(cpu), draw(mem_mi)
    args = tuple(draw(st.lists(st.text(max_size=4), max_size=4)))
    inputs = tuple(draw(st.lists(names, max_size=3, unique=True))) if kind == "job" else ()
    seed = draw(st.integers(0, 2**16))
    rng = random.Random(seed)

    def build(style: int) -> Codespec:
        env_items = list(env.items())
        ep_items = list(endpoints.items())
        buf = list(inputs)
        if style:
            rng.shuffle(env_items)
            rng.shuffle(ep_items)
            rng.shuffle(buf)
        return Codespec(
            name="p",
            image="img",
            kind=kind,
            args=args,
            env=dict(env_items),
            endpoints=dict(ep_items),
            buffers=Buffers(tuple(buf), ()),
            resources=Resources(requests=Quantities(cpu_text(c, style), mem_text(m, style))),
        )

    return build(0), build(1)


@settings(max_examples=200, deadline=None)
@given(codespecs())
def test_equal_specs_have_equal_keys(pair: tuple[Codespec, Codespec]) -> None:
    a, b = pair
    validate(a)
    validate(b)
    assert same_content(a, b)


@settings(max_examples=200, deadline=None)
@given(codespecs())
def test_normalising_never_changes_meaning(pair: tuple[Codespec, Codespec]) -> None:
    _, b = pair
    assert equality_key(normalize(b)) == equality_key(b)
    assert normalize(normalize(b)) == normalize(b)
    validate(normalize(b))
