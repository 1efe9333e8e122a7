"""mambakit genomics app (installed as mambakit.apps.genomics): Mamba models on DNA.

tokenizer   single-nucleotide tokenizer, Caduceus/HyenaDNA id layout, complement map, JSON for checkpoints
readers     FASTA/FASTQ (gzip, BGZF, indexed), BED over FASTA, CSV/TSV, per-class files; splits; one-line
            `GenomicsDataError`s naming the file and line
datasets    tokenized sequences and genome windows (torch map-style), reverse-complement augmentation
tasks       ClassifyTask (RC conjoining over the core's classification), PretrainTask, MlmTask
rc          reverse-complement equivariance by parameter sharing (Caduceus-PS modules)
models      GenomicsMambaConfig (causal, BiMamba, RC-equivariant; registered as "mambakit-genomics"), the
            RC-equivariant backbone the core heads build over it, and the model each task trains
predict     class logits, embeddings, .npy/.parquet export; RC conjoining at inference
prepare     train/val/test datasets from user data or the embedded real data (data/README.md)
cli         the domain: its tasks, options and `predict` command (the core builds train and eval from them)
"""
