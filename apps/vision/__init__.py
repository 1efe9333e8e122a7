"""mambakit vision app (installed as mambakit.apps.vision): VMamba and any timm model on images.

Importing it registers the VMamba models with timm, so `timm.create_model("vmamba_tiny_s1l8")` works after
`import mambakit.apps.vision`, and the classifier's config and architecture with mambakit, so `load_model` reads a
vision checkpoint in a process that has not imported the app yet.

    models       VMamba (SS2D cross-scan backbone) as native timm models: the six releases and small ones
    checkpoints  released VMamba .pth files, read without executing their pickled code
    classifier   any timm model as a mambakit model (registered config and architecture) for the trainer
    data         readers (ImageFolder, CSV of path,label, HF parquet), image decoding, the embedded dataset
    cli          the domain: tasks, options, `eval` with a confusion matrix, `predict`
"""

try:
    from . import classifier, models
except ModuleNotFoundError as error:  # a package of the `vision` extra: the CLI then says how to install it
    if (error.name or "").split(".")[0] not in ("timm", "torchvision", "PIL"):
        raise
else:
    __all__ = ["classifier", "models"]
