"""Guest images built locally from Debian packages: ``micro`` (kernel, busybox, dropbear in an
initramfs; its scripts ``init.sh``, ``udhcpc.sh`` and ``vp-dirty.sh`` ship as package data),
``memcheck`` (vp-memcheck, the guest memory-integrity checker, compiled from ``vp-memcheck.c``
and shipped in the micro image with its boot hook and CGIs, or through cloud-init),
``cloudinit`` (vp-memcheck and vp-dirty for a stock cloud image, through cloud-init),
``containerdisk`` (an image as a KubeVirt containerDisk OCI archive), ``store`` (built images,
cached by the hash of their inputs), ``cacheroot`` (where the cache is), and the helpers ``debs``,
``elf``, ``cpio``."""
