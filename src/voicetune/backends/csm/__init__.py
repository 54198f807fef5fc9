"""Sesame CSM-1B backend (``--backend csm``): transformers' ``CsmForConditionalGeneration`` with its Mimi
codec.

Files: :mod:`.layout` (the base folder: Hugging Face layout of ``sesame/csm-1b``, validation, hub ids),
:mod:`.options` (``CsmOptions``), :mod:`.parts` (named parts, LoRA targets), :mod:`.features` (Mimi codes
cached by content hash, segments, batches), :mod:`.loss` (the training loss from cached codes, compute
amortisation, speed), :mod:`.synthesis` (voice prompting with reference context, capped, seeded generation),
:mod:`.export` (merged model folder + peft adapter), :mod:`.tiny` (an untrained tiny base), :mod:`.backend`
(the :class:`~voicetune.backends.base.Backend`). Nothing here imports coqui-tts.
"""
