"""voicetune.backends."""
