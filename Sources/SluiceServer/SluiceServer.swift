// Placeholder: SluiceServer is being written.
