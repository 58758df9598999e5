#ifndef SLUICE_CLIBFUZZER_H
#define SLUICE_CLIBFUZZER_H

#include <stddef.h>
#include <stdint.h>

/// The fuzz target: each target defines it in Swift with `@_cdecl("LLVMFuzzerTestOneInput")`.
/// Called once per input; returns 0.
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/// libFuzzer's entry point for a program with its own `main` (compiler-rt, since LLVM 11): runs
/// the fuzzing loop (or the given inputs) with libFuzzer's command-line flags, calling `callback`
/// once per input. SwiftPM links a Swift executable with its own `main` (which wins over
/// libFuzzer's), so the targets call this from `main.swift`.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
