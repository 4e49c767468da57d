"""Benchmarks: the timing core (``timing``), configuration and results (``results``), the
engine (``engine``), one case module per runtime (``cases_torch``, ``cases_tf``,
``cases_ort``), memory (``memory``), FLOPs and the matmul peak (``flops``), plots (``plot``).
The method is described in docs/benchmarking.md; the environment comes from ``parity.env``."""
