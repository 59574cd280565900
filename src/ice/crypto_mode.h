// Moved to the public API: iceblk/crypto_mode.h (include/ is the one home of these types).
#pragma once

#include "iceblk/crypto_mode.h"
