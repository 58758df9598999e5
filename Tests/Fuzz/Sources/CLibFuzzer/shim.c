// Declarations only (see include/CLibFuzzer.h); the definitions are in libFuzzer, linked by
// `-sanitize=fuzzer`.
#include "CLibFuzzer.h"
