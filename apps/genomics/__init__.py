"""mambakit genomics app (installed as mambakit.apps.genomics): Mamba models on DNA.

tokenizer   single-nucleotide tokenizer, Caduceus/HyenaDNA id layout, complement map, JSON for checkpoints
readers     FASTA/FASTQ (gzip, BGZF, indexed), BED over FASTA, CSV/TSV, per-class files; splits; one-line
            `GenomicsDataError`s naming the file and line
datasets    tokenized sequences and genome windows (torch map-style), reverse-complement augmentation
tasks       ClassifyTask (accuracy, MCC, AUROC), PretrainTask (bits per base), MlmTask for mambakit.train
models      the genomics MambaConfig (causal, BiMamba, RC-equivariant) and the model each task trains
predict     class logits, embeddings, .npy/.parquet export; RC conjoining at inference
prepare     train/val/test datasets from user data or the embedded real data (data/README.md)
"""
