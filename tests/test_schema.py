"""Published JSON Schemas: real check and bench results validate, broken ones do not, and both
round-trip through ``from_dict`` to the same JSON."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from diagnostics_cache import full_check
from report_cache import small_bench

from parity.bench.results import BenchResult
from parity.check import CheckResult
from parity.cli import main
from parity.errors import UsageError
from parity.report.schema import BENCH_SCHEMA, CHECK_SCHEMA, validate


def _check() -> dict:
    return json.loads(json.dumps(full_check("mlp").to_dict()))  # through JSON, as a file holds it


def test_the_schemas_are_valid_json_schema() -> None:
    for schema in (CHECK_SCHEMA, BENCH_SCHEMA):
        jsonschema.Draft202012Validator.check_schema(schema)


def test_a_full_check_result_validates_and_round_trips() -> None:
    data = _check()
    assert data["layers"] and data["gradients"] and data["training"]  # every diagnostic is in it
    validate(data, "check")
    assert CheckResult.from_dict(data).to_dict() == data
    validate({"passed": True, "results": [data, data]}, "check")  # `check --all --json`


def test_a_real_bench_result_validates_and_round_trips() -> None:
    data = json.loads(json.dumps(small_bench()))
    validate(data, "bench")
    assert {c["status"] for c in data["cells"]} == {"ok", "skipped"}
    assert all(0 < len(c["samples_s"]) <= 500 for c in data["cells"] if c["status"] == "ok")
    assert BenchResult.from_dict(data).to_dict() == data  # the decision is recomputed, identically


@pytest.mark.parametrize("kind, path, value, where", [
    ("check", ("comparisons", 0, "max_abs"), [1.0], "comparisons/0/max_abs"),
    ("check", ("passed",), "yes", "passed"),
    ("bench", ("cells", 0, "status"), "fine", "cells/0/status"),
    ("bench", ("cells", 0, "batch"), 0, "cells/0/batch"),
    ("bench", ("decision", "groups", 0, "others", 0, "tied"), "no", "decision/groups/0/others/0/tied"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_broken_result_names_where(kind: str, path: tuple, value: object, where: str) -> None:
    data = copy.deepcopy(_check() if kind == "check" else small_bench())
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(UsageError, match=f"not a valid {kind} result at {where}"):
        validate(data, kind)


def test_schema_command_prints_the_schema(capsys: pytest.CaptureFixture) -> None:
    assert main(["schema", "bench"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(BENCH_SCHEMA))
    with pytest.raises(SystemExit) as exc:
        main(["schema", "nope"])
    assert exc.value.code == 2
