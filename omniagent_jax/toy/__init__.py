"""The toy world (docs/toy.md): synthetic videos whose questions need active perception, a scripted expert
and baseline, the toy tokenizer, and the settings that keep every trajectory row small enough for a CPU.

Everything here is numpy + PyAV (no JAX): ``world`` (tasks), ``render`` (pictures, sound, MP4), ``perceive``
(reading decoded media), ``check`` (answers checked by decoding), ``expert`` (policies), ``settings`` (prompt
and limits), ``tokenizer`` (the BPE), ``splits`` and ``cli`` (writing and scoring splits).
"""
