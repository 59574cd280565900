// Moved to the public API: iceblk/key.h (include/ is the one home of these types).
#pragma once

#include "iceblk/key.h"
