"""voicetune.ui."""
