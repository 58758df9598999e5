import FuzzSupport

// Load the rank files before libFuzzer starts timing inputs.
_ = Loaded.tokenizers
runLibFuzzer()
