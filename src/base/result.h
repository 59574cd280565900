// Moved to the public API: iceblk/result.h (include/ is the one home of these types).
#pragma once

#include "iceblk/result.h"
