#!/usr/bin/env bash
# Checks how a built svdprune_cuda._C refers to the C++ runtime. Fails when it has
#  - an undefined std:: symbol without a GLIBCXX/CXXABI version: bound to an unversioned re-export
#    of torch's libraries instead of libstdc++ (see LINK_FIRST in build_description.py), which
#    also takes away the loader's check that the runtime is as new as the compiler's;
#  - a reference to stream insertion (std::ostream::_M_insert): error messages are formatted
#    without iostreams (see throw_error in csrc/svdprune.h).
#
#   bash scripts/check_library_symbols.sh [LIBRARY]   # default: svdprune_cuda/_C.abi3.so
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
library=${1:-svdprune_cuda/_C.abi3.so}
undefined=$(nm -D --undefined-only "$library" | awk '{print $NF}')
unversioned=$(grep -v '@' <<<"$undefined" | c++filt | grep -E '^((vtable|VTT|typeinfo|typeinfo name) for )?std::' || true)
insertion=$(grep '_M_insert' <<<"$undefined" | c++filt || true)
status=0
if [ -n "$unversioned" ]; then
  printf '%s: std:: references without a version:\n%s\n' "$library" "$unversioned" >&2
  status=1
fi
if [ -n "$insertion" ]; then
  printf '%s: references to stream insertion:\n%s\n' "$library" "$insertion" >&2
  status=1
fi
[ $status -ne 0 ] || echo "$library: every std:: reference is versioned; no stream insertion"
exit $status
