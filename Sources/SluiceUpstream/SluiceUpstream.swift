// Placeholder: SluiceUpstream is being written.
