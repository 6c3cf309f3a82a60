#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine, idempotently:
# system packages (ffmpeg; redis-server, postgresql and chromium for the orchestration and UI tests)
# and a virtual environment in .venv with the project and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
# Celery's broker and the shared instance storage, started on loopback by the tests.
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# The UI test drives Debian's browser through Playwright; Playwright's own browser download does not work here.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# Debian's python3 makes venvs only with python3-venv (ensurepip) installed.
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "installing system packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# A venv left without pip (a failed earlier attempt) is made again.
if [ ! -x .venv/bin/pip ]; then
  rm -rf .venv
  python3 -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last successful install.
stamp=.venv/.neutts-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[codec,dnsmos,test]'
  touch "$stamp"
fi

# PyPI's torchaudio wheels are CUDA builds whose C++ extension needs libc10_cuda.so, so with the CPU
# torch `import torchaudio` (and so `import neucodec`) fails. neucodec uses only torchaudio's
# pure-PyTorch parts (transforms.Resample, for file input we never use), and torchaudio imports
# without its extension when the library files are absent. So on a CPU-only torch, remove them.
.venv/bin/python - <<'EOF'
import importlib.util, pathlib, sys
import torch
spec = importlib.util.find_spec("torchaudio")
if spec is not None and torch.version.cuda is None:
    for lib in (pathlib.Path(spec.origin).parent / "lib").glob("*.so"):
        lib.unlink()
        print(f"removed {lib.name}: a CUDA extension unusable with the CPU torch", file=sys.stderr)
import neucodec  # noqa: F401  fails here, not in the first test, when the codec stack is broken
EOF
