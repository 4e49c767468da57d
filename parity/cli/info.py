"""`parity doctor` and `parity list`: the environment and the zoo."""

from __future__ import annotations

import argparse
import json
from typing import Any

from parity.cli.common import EXIT_OK


def add_commands(sub: Any) -> None:
    doctor = sub.add_parser("doctor", help="print versions, devices, providers, threads and precision settings")
    doctor.add_argument("--json", action="store_true", help="print JSON")

    lst = sub.add_parser("list", help="list the zoo models")
    lst.add_argument("--json", action="store_true", help="print JSON")
    doctor.set_defaults(handler=cmd_doctor)
    lst.set_defaults(handler=cmd_list)


def cmd_doctor(args: argparse.Namespace) -> int:
    from parity.env import capture

    env = capture()
    if args.json:
        print(json.dumps(env, indent=2, default=str))
        return EXIT_OK
    v = env["versions"]
    print("versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val))
    cpu = env["cpu"]
    print(f"platform: {env['platform']} ({cpu['logical_cores']} CPUs, {cpu['usable_cores']} usable: {cpu['model']}; "
          f"load average {env['load_average_1min']})")
    gpu = env["gpu"]
    if gpu:
        smi = gpu.get("nvidia_smi") or {}
        print(f"gpu: {gpu.get('name')}" + (f" x{gpu['count']}" if gpu.get("count") else "")
              + (f", driver {smi['driver_version']}" if smi.get("driver_version") else ""))
    else:
        print("gpu: none visible")
    t, tf, ort = env["torch"], env["tensorflow"], env["onnxruntime"]
    if t["available"]:
        print(f"torch: devices {t['devices']}, threads intra {t['intra_op_threads']} / inter {t['inter_op_threads']}, "
              f"TF32 matmul {t['tf32']['matmul']} / cuDNN conv {t['tf32']['cudnn_conv']}, CUDA {t['cuda']}")
    else:
        print(f"torch: not available ({t['error']})")
    if tf["available"]:
        print(f"tensorflow: devices {tf['devices']}, threads intra {tf['intra_op_threads']} / inter "
              f"{tf['inter_op_threads']} (0 = TF's default), TF32 {tf['tf32']}, oneDNN {'on' if tf['onednn'] else 'off'}")
    else:
        print(f"tensorflow: not available ({tf['error']})")
    if ort["available"]:
        print(f"onnxruntime: providers {ort['providers']}")
    else:
        print(f"onnxruntime: not available ({ort['error']})")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    import zoo

    rows = []
    for name in zoo.names():
        spec = zoo.get(name)
        row = {"name": name, "family": spec.family, "presets": list(spec.presets),
               "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "layout": s.layout}
                          for s in spec.inputs]}
        if args.json:
            row["parameters"] = _param_counts(spec)  # at the default (small) preset
            if spec.param_difference:
                row["parameter_difference"] = {"torch_minus_tf": spec.param_difference,
                                               "reason": spec.param_difference_reason}
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            shapes = ", ".join(f"{i['name']} {tuple(i['shape'])} {i['layout']}" for i in r["inputs"])
            print(f"{r['name']:<14}{r['family']:<14}presets: {', '.join(r['presets']):<18}inputs: {shapes}")
    return EXIT_OK


def _param_counts(spec: object) -> dict[str, int]:
    import torch  # noqa: F401  (before TensorFlow)

    tm = spec.build_torch(0)  # type: ignore[attr-defined]
    km = spec.build_keras(0)  # type: ignore[attr-defined]
    return {"torch": int(sum(p.numel() for p in tm.parameters())),
            "tf": int(sum(int(w.numpy().size) for w in km.trainable_weights))}
