"""mambakit audio app (installed as mambakit.apps.audio): raw-waveform Mamba models.

data       audio I/O through soundfile (never torchaudio.load/save), resampling, mono downmix, 8-bit mu-law
           (torchaudio's fixed variant) and linear quantisation, readers, the embedded Free Spoken Digit
           Dataset (data/README.md, CC BY-SA 4.0), LM and classification datasets
models     AudioConfig, AudioLM (class-conditioned, streaming step) and AudioClassifier over the core's
           pooled U-Net (mambakit.nn.PooledUNet)
generate   sampling through the streaming state, O(1) per sample
tasks      clip classification for the trainer
cli        the domain: tasks lm and classify, options, `generate` (WAV files) and `predict`
"""
