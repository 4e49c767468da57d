"""Published JSON Schemas (draft 2020-12) of `parity check --json` and `parity bench --json`.

They pin what other tools may read: the names, types and required fields. Fields may be added
(objects stay open); a field is never renamed or retyped without changing these schemas.
Non-finite floats are written as null (NaN) or the strings "inf"/"-inf", hence ``_FLOAT``.
"""

from __future__ import annotations

from typing import Any

_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_FLOAT: dict[str, Any] = {"oneOf": [{"type": "number"}, {"type": "null"}, {"enum": ["inf", "-inf", "nan"]}]}
_OPT_NUM: dict[str, Any] = {"type": ["number", "null"]}
_STR_LIST: dict[str, Any] = {"type": "array", "items": {"type": "string"}}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "object", "required": sorted(required), "properties": {**required, **(optional or {})}}


_COMPARISON = _obj({
    "a": {"type": "string"}, "b": {"type": "string"}, "output": {"type": "string"}, "passed": {"type": "boolean"},
    "atol": _FLOAT, "rtol": _FLOAT, "max_abs": _FLOAT, "max_rel": _FLOAT, "mean_abs": _FLOAT, "cosine": _FLOAT,
}, {"over_tolerance": {"type": "integer"}, "size": {"type": "integer"}, "notes": _STR_LIST})

_LAYER_ROW = _obj({"layer": {"type": "string"}, "max_abs": _FLOAT, "atol": _FLOAT, "passed": {"type": "boolean"}},
                  {"index": {"type": "integer"}, "depth": {"type": "integer"}, "kind": {"type": "string"}})
_NOT_COMPARED = _obj({"skipped": {"type": "string"}})
_LAYERS = {"oneOf": [{"type": "null"}, _obj({"passed": {"type": "boolean"}, "rows": {"type": "array", "items": _LAYER_ROW}},
                                             {"first_divergence": {"type": ["string", "null"]}})]}
_PARAM = _obj({"name": {"type": "string"}, "max_abs": _FLOAT, "atol": _FLOAT, "passed": {"type": "boolean"}})
_GRADIENTS = {"oneOf": [{"type": "null"}, _NOT_COMPARED,
                        _obj({"passed": {"type": "boolean"}, "parameters": {"type": "array", "items": _PARAM}})]}
_STEP = _obj({"step": {"type": "integer"}, "torch": _FLOAT, "tf": _FLOAT, "abs_diff": _FLOAT, "atol": _FLOAT,
              "passed": {"type": "boolean"}})
_RUN = _obj({"passed": {"type": "boolean"}, "losses": {"type": "array", "items": _STEP}})
_TRAINING = {"oneOf": [{"type": "null"}, _NOT_COMPARED,
                       _obj({"passed": {"type": "boolean"}, "steps": {"type": "integer"},
                             "runs": {"type": "object", "additionalProperties": _RUN}})]}

_ONE_CHECK = _obj({
    "model": {"type": "string"}, "preset": {"type": "string"}, "source": {"type": "string"},
    "target": {"type": "string"}, "passed": {"type": "boolean"}, "environment": {"type": "object"},
    "comparisons": {"type": "array", "items": _COMPARISON}, "tolerance": {"type": "object"},
    "port": _obj({"source": {"type": "string"}, "target_framework": {"type": "string"}, "layers": {"type": "array"}}),
    "runners": {"type": "object"},
}, {"layers": _LAYERS, "gradients": _GRADIENTS, "training": _TRAINING, "notes": _STR_LIST,
    "lint": {"type": "array"}, "ported": {"type": "boolean"}, "files": {"type": "object"}})

CHECK_SCHEMA: dict[str, Any] = {
    "$schema": _DRAFT, "$id": "parity-check-result", "title": "parity check --json",
    # one check, or `check --all`: {"passed", "results": [check, ...]}; if/then/else names the failing field
    "if": {"type": "object", "required": ["results"]},
    "then": _obj({"passed": {"type": "boolean"}, "results": {"type": "array", "items": _ONE_CHECK}}),
    "else": _ONE_CHECK,
}

_STATS = _obj({k: {"type": "number"} for k in ("median_s", "p90_s", "p99_s", "min_s", "max_s", "mean_s", "stdev_s")}
              | {"count": {"type": "integer", "minimum": 1}})
_CELL = _obj({
    "runtime": {"type": "string"}, "task": {"enum": ["inference", "training"]}, "batch": {"type": "integer", "minimum": 1},
    "status": {"enum": ["ok", "skipped", "failed"]}, "reason": {"type": "string"},
}, {"device": {"type": "string"}, "stats": {"oneOf": [{"type": "null"}, _STATS]}, "first_call_s": _OPT_NUM,
    "throughput": _OPT_NUM, "peak_memory_bytes": {"type": ["integer", "null"]}, "memory_source": {"type": "string"},
    "memory_comparable": {"type": "boolean"}, "flops": {"type": ["integer", "null"]}, "achieved_gflops": _OPT_NUM,
    "fraction_of_peak": _OPT_NUM, "settings": {"type": "object"},
    "samples_s": {"type": "array", "items": {"type": "number", "minimum": 0}}})
_VERSUS = _obj({"runtime": {"type": "string"}, "speedup": _OPT_NUM, "tied": {"type": "boolean"},
                "speedup_interval": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
                "break_even_calls": {"type": ["integer", "null"]}, "parity": {"type": "object"}})
_GROUP = _obj({"batch": {"type": "integer"}, "fastest": {"type": ["string", "null"]},
               "winner": {"type": ["string", "null"]}, "tied_with": _STR_LIST,
               "others": {"type": "array", "items": _VERSUS}, "memory": {"type": "object"}})
# `parity bench MODEL --generated DIR`: a generated twin's median over the hand-written twin's, per batch and runtime
_GENERATED = _obj({"runtime": {"type": "string"}, "batch": {"type": "integer", "minimum": 1}, "ratio": _OPT_NUM,
                   "interval": {"oneOf": [{"type": "null"}, {"type": "array", "items": {"type": "number"},
                                                             "minItems": 2, "maxItems": 2}]}},
                  {"folder": {"type": ["string", "null"]}, "interval_source": {"type": ["string", "null"]},
                   "generated_median_s": {"type": "number"}, "hand_written_median_s": {"type": "number"},
                   "alternated": {"type": "boolean"}, "not_measured": {"type": "string"}})
_DECISION = _obj({"device": {"type": "string"}, "task": {"type": "string"}, "method": {"type": "string"},
                  "groups": {"type": "array", "items": _GROUP}, "not_measured": {"type": "array"},
                  "sentences": _STR_LIST}, {"generated": {"type": "array", "items": _GENERATED}})

BENCH_SCHEMA: dict[str, Any] = {
    "$schema": _DRAFT, "$id": "parity-bench-result", "title": "parity bench --json",
    **_obj({
        "model": {"type": "string"}, "preset": {"type": "string"}, "task": {"enum": ["inference", "training"]},
        "config": _obj({"device_resolved": {"type": "string"}, "batches": {"type": "array"}}),
        "environment": {"type": "object"}, "cells": {"type": "array", "items": _CELL},
        "flops": {"type": "object", "additionalProperties": {"type": ["integer", "null"]}},
    }, {"peak": {"oneOf": [{"type": "null"}, _obj({"gflops": {"type": "number"}})]}, "decision": _DECISION,
        "load_average_1min": {"type": "object"}}),
}

SCHEMAS = {"check": CHECK_SCHEMA, "bench": BENCH_SCHEMA}


def validate(data: Any, kind: str) -> None:
    """Raise ``UsageError`` naming the first place ``data`` breaks the ``kind`` schema (needs jsonschema)."""
    import jsonschema

    from parity.errors import UsageError

    try:
        jsonschema.validate(data, SCHEMAS[kind])
    except jsonschema.ValidationError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "(top level)"
        raise UsageError(f"not a valid {kind} result at {where}: {exc.message[:300]}") from None


__all__ = ["BENCH_SCHEMA", "CHECK_SCHEMA", "SCHEMAS", "validate"]
