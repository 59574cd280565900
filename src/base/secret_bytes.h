// Moved to the public API: iceblk/secret_bytes.h (include/ is the one home of these types).
#pragma once

#include "iceblk/secret_bytes.h"
