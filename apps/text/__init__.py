"""mambakit text app (installed as mambakit.apps.text)."""
