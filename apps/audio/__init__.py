"""mambakit audio app (installed as mambakit.apps.audio)."""
