"""What the GPT-TTS backends share: XTTS's GPT descends from Tortoise's UnifiedVoice (coqui-tts
``TTS/tts/layers/xtts/gpt.py`` and ``TTS/tts/layers/tortoise/autoregressive.py``), so the way voicetune trains
them is one piece of code, and ``backends/xtts/`` and ``backends/tortoise/`` only say what is their own (the
torchtune pattern: shared ``modules/`` under each family's ``_component_builders.py``).

=================  ==========================================================================================
``layers``         the GPT-2 blocks on SDPA with MLP/layer recomputation, packed embeddings, aligned heads and
                   the two cross-entropies; fused attention in the conditioning encoder (SdpaQKVAttention)
``speed``          :class:`~.speed.GptFamily` (what a backend supplies: conditioning, packing, loss head), the
                   packed loss, flat weight buffers (FlatLayout), SpeedSettings and GptTrainingSpeed (bf16
                   weights, compile per layer or whole loss, the inputs CUDA graphs capture)
``lora``           LoRA on the GPT-2 ``Conv1D`` layers (fan_in_fan_out)
``parts``          part names, learning-rate sides and LoRA targets (no heavy imports: options use them)
``structure``      what trains (full, LoRA, frozen parts), per-side learning rates x weight decay, checkpoint
                   state with its structure meta
``options``        the option fields both backends have (freeze, LoRA targets, dropout, the speed options) and
                   their checks
``files``          DVAE (dvae.pth) and mel-normaliser files, read with weights_only
``features``       the per-clip feature cache: computing and reusing it (drops with reasons), its store's
                   epochs, read counts and memory, and the shared part of the collate
=================  ==========================================================================================

Where things were before (``backends/xtts/``), for rebases: ``speed.py``'s model pieces (``_attention``,
``_mlp``, ``_block``, ``_check_gpt2_blocks`` -> ``check_gpt2_blocks``, ``layers``, ``embed``,
``aligned_linear``, ``head_loss``, ``SdpaQKVAttention``, ``set_attention``, ``round_up``) -> ``layers``;
``PackedLossModule``, ``FlatLayout``, ``flat_loss_fn``, ``SpeedSettings``, ``GptTrainingSpeed``,
``configure_training``, ``PACKED_KEYS`` -> ``speed`` (taking a GptFamily); XTTS's ``GptConstants``,
``coqui_targets``, ``pack_batch``, ``conditioning``, ``packed_loss`` stay in ``xtts/speed.py`` (with
``FAMILY``); ``xtts/lora.py`` -> ``lora``; ``xtts/structure.py``'s rules -> ``structure`` (XTTS wrappers and
its vocabulary stay); ``xtts/options.py``'s shared fields and checks -> ``options``; ``layout.py``'s DVAE and
mel-stats readers and ``tiny.py``'s ``compute_mel_stats`` -> ``files``.
"""
