"""mambakit vision app (installed as mambakit.apps.vision)."""
