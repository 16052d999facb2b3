// What every isa_*.cpp includes before its `#pragma GCC target` region: the system and shared
// headers, compiled for the baseline. Functions defined here (std::, mathfn.h's rp_*) stay
// baseline code wherever they are not inlined, so no path's instructions can leak into code that
// another path runs; everything defined inside a region lives in that path's own namespace.
#pragma once
// GCC 12 warns about the _mm512_undefined_ps() inside its own intrinsics (fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "common/mathfn.h"
#include "common/sampler_math.h"
#include "cpu/kernels.h"
