"""Benchmarks: ``zoo``
holds the models and the reference-style AMO, ``cpu`` runs the CPU latency bench behind
``amo-engine bench``; ``bench/gpu_scale.py`` in the repository uses the same zoo, and ``amo_engine.timing`` measures for both.
This module stays import-light: the command line reads ``CONFIGS`` before loading torch."""

CONFIGS = {  # config -> what it is and how long a run takes on a 2-core CPU (--calls 8 --loops 2 --steps 6)
    "tiny-sd3": "tiny SD3 preset, 128 px (~1-2 min)",
    "tiny-flux": "tiny FLUX preset, 128 px (~1-2 min)",
    "tiny-sd35": "tiny SD3.5 preset (RMS q/k norms, MMDiT-X attn2), 128 px (~1-2 min)",
    "tiny-auraflow": "tiny AuraFlow preset, 128 px (~1-2 min)",
    "medium-sd3": "~70 M-param SD3 MMDiT, 512 px, CFG rows (~10 min)",
    "medium-flux": "~70 M-param FLUX, 512 px (~8 min)",
}
