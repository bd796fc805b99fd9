#!/bin/sh
# Install the PyTorch build forsaken runs on into one Python environment, before the project
# itself (whose `torch==VERSION` pin the build installed here then satisfies).
#
#   deploy/install-torch.sh PYTHON
#
# PyPI's Linux wheel of torch is a CUDA build that also pulls in gigabytes of NVIDIA
# libraries. Federated clients and the aggregation server train small models on CPUs, so the
# default is the CPU build from the PyTorch project's CPU wheel index, one wheel of about
# 190 MB with no NVIDIA dependencies.
#
#   TORCH_VERSION  default 2.13.0
#   TORCH_VARIANT  cpu (default); a CUDA build named as on the PyTorch index, e.g. cu128;
#                  or `pypi` for PyPI's own wheel
#   TORCH_INDEX    default https://download.pytorch.org/whl/$TORCH_VARIANT
#
# A matching wheel that pip can already see without any index (its --find-links, from pip's
# configuration or PIP_FIND_LINKS) is used first, so a machine with the wheel at hand never
# waits on an index it cannot reach. Only torch itself comes from the PyTorch index; its
# dependencies come from your usual index when the project is installed.
set -eu

PYTHON=${1:?usage: install-torch.sh PYTHON}
VERSION=${TORCH_VERSION:-2.13.0}
VARIANT=${TORCH_VARIANT:-cpu}
INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/$VARIANT}

if [ "$VARIANT" = pypi ]; then
    WANT=$VERSION
else
    WANT=$VERSION+$VARIANT
fi

installed=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("torch"))' \
    2>/dev/null || true)
if [ "$installed" = "$WANT" ]; then
    echo "torch $WANT is already installed"
    exit 0
fi

if [ "$VARIANT" = pypi ]; then
    "$PYTHON" -m pip install -q "torch==$WANT"
elif "$PYTHON" -m pip install -q --no-index --no-deps "torch==$WANT" 2>/dev/null; then
    echo "torch $WANT installed from a wheel already on this machine"
else
    echo "torch $WANT: downloading from $INDEX"
    "$PYTHON" -m pip install -q --no-deps --index-url "$INDEX" "torch==$WANT"
fi

# torch cannot be imported yet (its dependencies come with the project), so check what was
# installed by its metadata: the version asked for, and for the CPU build no NVIDIA libraries.
"$PYTHON" - "$WANT" "$VARIANT" <<'CHECK'
import importlib.metadata as m
import sys

want, variant = sys.argv[1:]
got = m.version("torch")
nvidia = [r for r in m.requires("torch") or [] if r.lower().startswith("nvidia")]
if got != want or (variant == "cpu" and nvidia):
    sys.exit(f"install-torch.sh: wanted torch {want}, got {got} (requires {nvidia or 'no nvidia'})")
CHECK
