"""The one-parse loader (`yaml_data.parse`) gives what `yaml.load(text, CSafeLoader)` gives,
raises what it raises, reports duplicate keys as the node walk does, and indexes lines only
when asked; `compact` shares equal sub-models of one load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.policy import yaml_data
from gateway.policy.load import check_policy, parse_policy
from gateway.policy.tenants import RateLimits

DOCS = [
    "",
    "# only a comment\n",
    "---\n",
    "just a scalar\n",
    "a: 1\nb: '1'\nc: 0x1f\nd: 1_000\ne: 1.5\nf: .inf\ng: -.5e3\nh: 0o17\n",
    "a: yes\nb: No\nc: true\nd: ~\ne: null\nf:\ng: ''\nh: 'yes'\n",
    "a: 2026-03-31\nb: 2026-03-31T18:00:00Z\nc: '2026-03-31'\n",
    "a: !!str 5\nb: !!int '7'\nc: !!float 1\nd: !!binary aGVsbG8=\ne: !!null ''\n",
    "=: equals\nk: v\n",
    "x: &a {k: 1, j: [1, 2, {z: 3}]}\ny: *a\nz: [*a, *a]\n",
    "base: &b {kind: vllm, max_connections: 8}\nthis:\n  <<: *b\n  max_connections: 16\n",
    "a: &a {p: 1, q: 1}\nb: &b {q: 2, r: 2}\nc:\n  <<: [*a, *b]\n  s: 3\n",
    "a: &a {p: 1}\nb: &b {p: 2}\nc:\n  <<: *a\n  <<: *b\n",
    "a: &a {p: 1}\nc: {<<: {q: 2}, p: 3}\n",
    # Two merged mappings that share a key, a merged mapping that overrode its own merge:
    # left to PyYAML, whose answer differs with its version and the key's length.
    "a: &a {pp: 1}\nb: &b {pp: 2}\nc: {<<: [*a, *b]}\nd: {<<: *a, <<: *b}\n",
    "a: &a {<<: {pp: 1}, pp: 2}\nc: {<<: *a}\n",
    "t: &t {rpm: 60, tpm: 1000}\nu: {<<: *t, tpm: 5}\nv: {<<: *t}\n",
    "s: &s text\nt: *s\nlist:\n- - 1\n  - 2\n- []\n- {}\n",
    "k: v\nk: w\n",
    "seq: !!seq [1, 2]\nmap: !!map {a: 1}\n",
    # Handed to PyYAML whole: tags on collections.
    "s: !!set {a, b}\no: !!omap [{a: 1}, {b: 2}]\n",
    "? [complex, key]\n: value\n",
]


@pytest.mark.parametrize("text", DOCS)
def test_the_data_is_what_pyyaml_gives(text: str) -> None:
    try:
        want = yaml.load(text, Loader=yaml_data.Loader)
    except yaml.YAMLError as e:
        with pytest.raises(yaml.YAMLError) as got:
            yaml_data.parse(text)
        assert str(got.value) == str(e)
        return
    data, _, _ = yaml_data.parse(text)
    assert data == want
    assert repr(data) == repr(want)  # key order and types too


def test_aliases_are_one_object_as_pyyaml_makes_them() -> None:
    data, _, _ = yaml_data.parse("x: &a {k: [1]}\ny: *a\n")
    assert data["x"] is data["y"]


ERRORS = [
    "a: *nope\n",
    "a: &x 1\nb: &x 2\n",
    "a: 1\n---\nb: 2\n",
    "a: !!int abc\nb: [unclosed\n",
    "a: !!int abc\n",
    "a: [1, 2\n",
    "a:\n  - 1\n b: 2\n",
    "a: <<\n",
    "a: {<<: [1]}\n",
    "a: {<<: 1}\n",
    "a: !mytag {b: 1}\n",
    "? {a: 1}\n: v\n",
]


@pytest.mark.parametrize("text", ERRORS)
def test_errors_are_the_ones_pyyaml_raises(text: str) -> None:
    with pytest.raises(Exception) as want:  # `!!int abc` is a ValueError
        yaml.load(text, Loader=yaml_data.Loader)
    with pytest.raises(Exception) as got:
        yaml_data.parse(text)
    assert type(got.value) is type(want.value)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize(("text", "dupes"), [
    ("k: 1\nk: 2\n", [(2, "k")]),
    ("1: a\n'1': b\n", [(2, "1")]),           # one key as YAML text, two as values
    ("true: a\nTrue: b\n", []),              # one value, two texts: not the walk's duplicate
    ("a: &a {p: 1, p: 2}\nb: *a\n", [(1, "a.p"), (1, "b.p")]),
    ("a: &a {p: 1}\nb: {<<: *a, p: 2}\n", []),
    ("a: {x: 1}\nb: {x: 1}\n", []),
])
def test_duplicate_keys_are_the_node_walks(text: str, dupes: list[tuple[int, str]]) -> None:
    _, _, got = yaml_data.parse(text)
    assert [(i.line, i.path) for i in got] == dupes


def test_lines_are_indexed_only_when_asked() -> None:
    text = "providers:\n  a:\n    kind: vllm\n    base_url: 'http://h:1/v1'\n"
    _, lines, dupes = yaml_data.parse(text)
    assert dupes == []
    assert lines._lines is None  # a clean policy never builds the node tree
    assert lines[("providers", "a", "kind")] == 3
    assert lines[("providers",)] == 2  # a key's line is its value's, as before


def test_a_clean_policy_check_builds_no_line_index(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: yaml_data.Lines) -> None:
        raise AssertionError("indexed lines for a policy with nothing to report")

    monkeypatch.setattr(yaml_data.Lines, "_get", fail)
    check = check_policy("providers:\n  a: {kind: vllm, base_url: 'http://h:1/v1'}\n"
                         "models:\n  m: {deployments: [{provider: a, model: m}]}\n",
                         "p.yaml", {})
    assert check.errors == [] and check.policy is not None


TENANTS = """
tenants:
  a: {limits: {rpm: 60, tpm: 1000}, budget: {monthly_usd: '10'}}
  b: {limits: {rpm: 60, tpm: 1000}, budget: {monthly_usd: '10'}}
  c: {limits: {rpm: 60, tpm: 2000}, budget: {monthly_usd: '10.0'}}
"""


def test_equal_sub_models_of_one_load_are_one_object() -> None:
    p = parse_policy(TENANTS, "p.yaml", {})
    a, b, c = (p.tenants[n] for n in "abc")
    assert a.limits is b.limits and a.budget is b.budget
    assert a.limits is not c.limits and a.limits != c.limits
    # Equal as numbers, not as written: kept apart, so each prints as written.
    assert a.budget is not c.budget and str(c.budget.monthly_usd) == "10.0"  # type: ignore[union-attr]
    assert a.limits.model_fields_set is b.limits.model_fields_set == {"rpm", "tpm"}
    assert a.model_dump(exclude_unset=True) == {"limits": {"rpm": 60, "tpm": 1000},
                                                "budget": {"monthly_usd": 10}}


def test_models_built_in_code_are_not_shared() -> None:
    x, y = RateLimits(rpm=1), RateLimits(rpm=1)
    assert x == y and x is not y and x.model_fields_set is not y.model_fields_set


def test_aliased_webhooks_read_their_secret_file_each(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("sekrit\n")
    text = ("alerts:\n  webhooks:\n  - &h {url: 'https://h/x', secret_file: s}\n  - *h\n")
    check = check_policy(text, str(tmp_path / "p.yaml"), {})
    assert [i.message for i in check.errors if "secret" in i.path] == []


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[3].glob("policies/*.yaml")),
                         ids=lambda p: p.name)
def test_the_shipped_policies_parse_as_pyyaml_parses_them(path: Path) -> None:
    text = path.read_text()
    data, _, dupes = yaml_data.parse(text)
    assert repr(data) == repr(yaml.load(text, Loader=yaml_data.Loader)) and dupes == []


INDEXED = [*DOCS, "k: 1\nk: 2\n", "1: a\n'1': b\n", "a: {<<: {q: 2}, <<: [{r: 1}], p: 3}\n",
           "a:\n  - {x: 1, x: 2}\n  - [1, [2, {y: 3}]]\nb: !!str 1\n? [k]\n: {z: 1}\nc: 2\n",
           "a: &a {p: 1}\nb: *a\n", "a: &k key\n*k : 2\n"]


@pytest.mark.parametrize("text", INDEXED)
def test_lines_from_events_are_the_node_walks(text: str) -> None:
    try:
        node = yaml_data.Loader(text).get_single_node()
    except yaml.YAMLError:
        return
    walked = yaml_data.Lines(text)
    walked.index(node)
    lines = yaml_data.Lines(text)
    assert dict(lines) == dict(walked)  # from events, or the node walk when there is an alias
    assert lines.duplicates() == walked.duplicates()
