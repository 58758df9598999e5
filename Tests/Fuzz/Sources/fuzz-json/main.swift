import FuzzSupport

runLibFuzzer(fuzzTestOneInput)
