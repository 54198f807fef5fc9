"""voicetune.audio."""
