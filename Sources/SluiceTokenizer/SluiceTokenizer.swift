// Placeholder: SluiceTokenizer is being written.
