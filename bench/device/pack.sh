# Fill the git-ignored .device/ for a call on the GPU machine (run from the repository root, on this machine):
# `bash bench/device/pack.sh scan` before call_scan.sh, `bash bench/device/pack.sh models` before call_models.sh.
# A call carries at most 64 MiB with the checkout, and mamba-ssm with causal-conv1d (their wheels for that machine,
# ../shared/device/mamba-wheels, unzipped and stripped) is 59 MB packed: so call_scan.sh carries mamba-ssm and
# call_models.sh, made on the same machine while it is still warm (30 s), adds causal-conv1d. The two packs are kept
# outside the checkout, in $DEVICE_ATTIC (default ../device_attic), because .device/ travels whole.
set -e
attic=$(mkdir -p "${DEVICE_ATTIC:-../device_attic}" && cd "${DEVICE_ATTIC:-../device_attic}" && pwd)
if [ ! -f "$attic/mamba_site.tar.xz" ]; then
    site=$(mktemp -d)
    for wheel in ../shared/device/mamba-wheels/*.whl; do unzip -q -o "$wheel" -d "$site"; done
    find "$site" -name '*.so' -exec strip --strip-unneeded {} +
    (cd "$site" && tar cJf "$attic/mamba_site.tar.xz" $(ls | grep -v causal_conv1d) &&
        tar cJf "$attic/causal_conv1d_site.tar.xz" $(ls | grep causal_conv1d))
    rm -rf "$site"
fi
mkdir -p .device && rm -f .device/*.tar.xz
case "${1:-scan}" in
    scan) cp "$attic/mamba_site.tar.xz" .device/ ;;
    models) cp "$attic/causal_conv1d_site.tar.xz" .device/ ;;
    *) echo "usage: bash bench/device/pack.sh scan|models" >&2; exit 2 ;;
esac
