# shellcheck shell=bash
# Sourced by scripts/serve, scripts/test and scripts/install: makes sure what building
# RocksDB needs is there (a Rust toolchain, libclang for bindgen, a C++ compiler),
# installing it with apt where it can, and saying clearly what is missing where it cannot.

stagecache_fail() {
  echo "stagecache: $*" >&2
  exit 1
}

# True when NAME is a file name bindgen (clang-sys) loads as libclang: libclang.so,
# libclang.so.N, libclang-N.so, libclang-N.so.M. Not libclang-cpp*.so*: that is the C++
# interface library (Debian's libclang-cpp14, shipped on machines without libclang), which
# bindgen cannot use.
stagecache_is_libclang_name() {
  case "$1" in
    libclang-cpp*) return 1 ;;
    libclang.so | libclang.so.[0-9]*) return 0 ;;
    libclang-[0-9]*.so | libclang-[0-9]*.so.[0-9]*) return 0 ;;
    *) return 1 ;;
  esac
}

# Prints the first libclang bindgen can load, searching LIBCLANG_PATH, then the dynamic
# linker's cache, then the usual LLVM directories. STAGECACHE_LIBCLANG_DIRS (a
# colon-separated list) replaces the cache and the usual directories: the check's own test
# uses it to judge fake directory trees.
stagecache_find_libclang() {
  local dir file
  local -a dirs=()
  [ -n "${LIBCLANG_PATH:-}" ] && dirs+=("$LIBCLANG_PATH")
  if [ -n "${STAGECACHE_LIBCLANG_DIRS+set}" ]; then
    local IFS=:
    # shellcheck disable=SC2206
    dirs+=($STAGECACHE_LIBCLANG_DIRS)
  else
    if command -v ldconfig >/dev/null 2>&1 || [ -x /sbin/ldconfig ]; then
      local path
      while read -r path; do
        if stagecache_is_libclang_name "$(basename "$path")" && [ -e "$path" ]; then
          echo "$path"
          return 0
        fi
      done < <( (ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null) | sed -n 's/.*=> //p')
    fi
    dirs+=(/usr/lib/llvm-*/lib /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib)
  fi
  for dir in "${dirs[@]}"; do
    [ -d "$dir" ] || continue
    for file in "$dir"/libclang*; do
      [ -e "$file" ] || continue
      if stagecache_is_libclang_name "$(basename "$file")"; then
        echo "$file"
        return 0
      fi
    done
  done
  return 1
}

stagecache_have_libclang() {
  stagecache_find_libclang >/dev/null
}

stagecache_have_cxx() {
  command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1
}

stagecache_prerequisites() {
  command -v cargo >/dev/null 2>&1 ||
    stagecache_fail "cargo is not installed: install a Rust toolchain (1.89 or newer, e.g. with rustup) and run this again"

  if stagecache_have_libclang && stagecache_have_cxx; then
    return 0
  fi
  local packages="libclang-dev clang g++"
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo"
    else
      stagecache_fail "RocksDB needs libclang (not only libclang-cpp) and a C++ compiler; install them as root: apt-get install -y $packages"
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

# Says, once, before a build that will compile RocksDB from source for the first time,
# what is being built and roughly how long it takes, so a silent long build is expected.
# $1: the profile directory name (debug or release).
stagecache_announce_first_build() {
  local target="${CARGO_TARGET_DIR:-target}"
  if ! ls "$target/$1/build"/librocksdb-sys-*/out >/dev/null 2>&1; then
    echo "stagecache: first $1 build: compiling RocksDB (C++) from source; about 10 minutes on 2 cores, longer for release. Later builds reuse $target." >&2
  fi
}
