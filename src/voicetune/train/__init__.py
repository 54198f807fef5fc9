"""voicetune.train."""
