"""voicetune.evaluate."""
