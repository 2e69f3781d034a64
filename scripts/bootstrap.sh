# Sourced by run_train.sh and run_tests.sh: `tt_bootstrap [EXTRA]` sets PYTHON to an interpreter
# that has tinytitan (editable) and its dependencies, making the virtual environment .venv on first
# use. Later calls cost a file read. TINYTITAN_PYTHON=/path/to/python skips all of it.

_TT_TORCH_IS_RECENT='import sys, torch; sys.exit(tuple(map(int, torch.__version__.split(".")[:2])) < (2, 11))'

tt_bootstrap() {
  local extra=${1:-} root venv stamp
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [ -n "${TINYTITAN_PYTHON:-}" ]; then PYTHON=$TINYTITAN_PYTHON; return 0; fi
  venv=${TINYTITAN_VENV:-$root/.venv}
  PYTHON=$venv/bin/python
  # What was installed, keyed by pyproject.toml's content: editing the dependencies reinstalls.
  stamp="$(sha256sum "$root/pyproject.toml" | cut -c1-16) ${extra:-base}"
  if [ -f "$venv/.tinytitan-installed" ] && grep -qxF "$stamp" "$venv/.tinytitan-installed"; then return 0; fi
  echo "tinytitan: setting up $venv (first use only)..." >&2
  _tt_make_venv "$venv" && _tt_install_torch && _tt_install_project "$root" "$extra" || {
    echo "tinytitan: setting up $venv failed (see the messages above)" >&2; return 1; }
  echo "$stamp" >>"$venv/.tinytitan-installed"
}

_tt_make_venv() {
  local venv=$1 base=${TINYTITAN_BASE_PYTHON:-python3}
  [ -x "$venv/bin/python" ] && return 0
  "$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    echo "tinytitan: $base is older than Python 3.10" >&2; return 1; }
  if "$base" -c "$_TT_TORCH_IS_RECENT" 2>/dev/null; then
    # Reuse the torch of the Python at hand (a conda env or a GPU image, say) instead of
    # downloading it again: see its packages, even when that Python is itself a venv.
    "$base" -m venv --system-site-packages "$venv" || return 1
    "$base" -c 'import site; print("\n".join(site.getsitepackages()))' \
      >"$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_tinytitan_base.pth"
  else
    "$base" -m venv "$venv" || return 1
  fi
}

_tt_install_torch() {
  local pip="$PYTHON -m pip --disable-pip-version-check -q" version
  "$PYTHON" -c "$_TT_TORCH_IS_RECENT" 2>/dev/null && return 0
  # A torch wheel in pip's local wheel folder (find-links) first: no multi-GB download.
  if $pip install --no-index --no-deps "torch>=2.11" 2>/dev/null; then
    version=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("torch"))')  # no import: its deps are not there yet
    echo "tinytitan: using the local torch $version wheel" >&2
    $pip install "torch==$version"  # its own dependencies, from the index
  else
    # pip's configured index: without a local wheel this is the default (CUDA) build of torch.
    $pip install "torch>=2.11"
  fi
}

_tt_install_project() {
  local root=$1 extra=$2 target=$1
  [ -n "$extra" ] && target="$root[$extra]"
  "$PYTHON" -m pip --disable-pip-version-check -q install -e "$target"
}

# Run rather than sourced (`bash scripts/bootstrap.sh --help`): say what it is for, and do nothing.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "usage: source scripts/bootstrap.sh && tt_bootstrap [EXTRA]   (as run_train.sh and run_tests.sh do)"
  sed -n '1,/^$/s/^# \{0,1\}//p' "$0"
fi
