"""voicetune.backends.xtts."""
