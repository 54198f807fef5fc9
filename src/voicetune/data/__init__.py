"""voicetune.data."""
