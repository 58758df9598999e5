// Placeholder: SluiceCore is being written.
