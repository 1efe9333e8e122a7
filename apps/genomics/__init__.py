"""mambakit genomics app (installed as mambakit.apps.genomics)."""
