// Moved to the public API: iceblk/error.h (include/ is the one home of these types).
#pragma once

#include "iceblk/error.h"
