"""The benchmark of the CPC-SAM engine: the paper's comparison (labeled-only, CPC-SAM, its ablations,
zero-shot LiteMedSAM) over several seeds with paired statistics, on BUSI (2D) and MSD Hippocampus
(3D, two classes), and the engine's speed. Run it from the repository root as ``python -m benchmarks``.

Modules: ``data`` (datasets, split lists), ``runs`` (one training run per method, labeled list and
seed), ``zeroshot``, ``speed``, ``stats`` (seed spread, paired bootstrap), ``report``, ``cli``.
"""
