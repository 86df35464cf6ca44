# shellcheck shell=bash
# Sourced by scripts/serve and scripts/test: makes sure what building RocksDB needs is
# there (a Rust toolchain, libclang for bindgen, a C++ compiler), installing it with apt
# where it can, and saying clearly what is missing where it cannot.

stagecache_fail() {
  echo "stagecache: $*" >&2
  exit 1
}

stagecache_have_libclang() {
  [ -n "${LIBCLANG_PATH:-}" ] && ls "$LIBCLANG_PATH"/libclang*.so* >/dev/null 2>&1 && return 0
  ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so' && return 0
  ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1
}

stagecache_have_cxx() {
  command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1
}

stagecache_prerequisites() {
  command -v cargo >/dev/null 2>&1 ||
    stagecache_fail "cargo is not installed: install a Rust toolchain (1.88 or newer, e.g. with rustup) and run this again"

  if stagecache_have_libclang && stagecache_have_cxx; then
    return 0
  fi
  local packages="libclang-dev clang g++"
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo"
    else
      stagecache_fail "RocksDB needs libclang and a C++ compiler; install them as root: apt-get install -y $packages"
    fi
  fi
  command -v apt-get >/dev/null 2>&1 ||
    stagecache_fail "RocksDB needs libclang and a C++ compiler, and this is not a Debian-like system: install libclang and a C++ compiler, then run this again"
  echo "stagecache: installing $packages (needed to build RocksDB)" >&2
  $sudo apt-get update -qq >&2 || stagecache_fail "apt-get update failed; install $packages by hand"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $packages >&2 ||
    stagecache_fail "apt-get install $packages failed; install them by hand"
  stagecache_have_libclang || stagecache_fail "libclang is still not found after installing libclang-dev; set LIBCLANG_PATH to the directory holding libclang.so"
  stagecache_have_cxx || stagecache_fail "no C++ compiler found after installing g++"
}
