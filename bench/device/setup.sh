# Sourced first by every bench/device/call_*.sh on the GPU machine, in the repository root there: mamba-ssm from the
# carried .device/mamba_site.tar.xz when the call carries it (unpacked once per machine, in /tmp/site), the checkout
# on the path with its apps as mambakit.apps, and the apps' entry points (the checkout is not pip-installed there,
# and the CLI finds its domains, `bench capabilities` among them, through entry points).
mkdir -p /tmp/site
if [ -f .device/mamba_site.tar.xz ] && [ ! -d /tmp/site/mamba_ssm ]; then tar xJf .device/mamba_site.tar.xz -C /tmp/site; fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
ln -sfn "$PWD/apps" mambakit/apps
python3 - <<'PY'
import pathlib, tomllib
apps = tomllib.load(open("pyproject.toml", "rb"))["project"]["entry-points"]["mambakit.apps"]
info = pathlib.Path("/tmp/site/mambakit_checkout-0.dist-info")
info.mkdir(exist_ok=True)
(info / "METADATA").write_text("Metadata-Version: 2.1\nName: mambakit-checkout\nVersion: 0\n")
(info / "entry_points.txt").write_text("[mambakit.apps]\n" + "".join(f"{k} = {v}\n" for k, v in apps.items()))
PY
nvidia-smi --query-gpu=name --format=csv,noheader
