"""voicetune.backends.tortoise: Tortoise's autoregressive model finetuned as ai-voice-cloning users do."""
