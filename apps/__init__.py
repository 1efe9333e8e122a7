"""Domain apps, installed as mambakit.apps.<domain>; each registers its CLI commands (entry points group
`mambakit.apps`)."""
