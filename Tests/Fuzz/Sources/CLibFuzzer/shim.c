// Declarations only (see include/CLibFuzzer.h): libFuzzer, linked by `-sanitize=fuzzer`, defines
// LLVMFuzzerRunDriver, and each fuzz target defines LLVMFuzzerTestOneInput.
#include "CLibFuzzer.h"
