#ifndef SLUICE_CLIBFUZZER_H
#define SLUICE_CLIBFUZZER_H

#include <stddef.h>
#include <stdint.h>

/// libFuzzer's entry point for a program with its own `main` (compiler-rt, since LLVM 11): runs
/// the fuzzing loop (or the given inputs) with libFuzzer's command-line flags, calling `callback`
/// once per input. SwiftPM links Swift executables with a `main` of their own, so the targets
/// call this instead of relying on libFuzzer's `main`.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
